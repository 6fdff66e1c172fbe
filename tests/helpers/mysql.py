"""Straight to the test database, around the service: setup, inspection, invariants."""

import MySQLdb


def connect_kwargs(database: dict[str, str]) -> dict:
    """MySQLdb.connect arguments for the database described by MYSQL_* variables."""
    return {
        "host": database["MYSQL_HOST"],
        "port": int(database["MYSQL_PORT"]),
        "user": database["MYSQL_USER"],
        "password": database["MYSQL_PASSWORD"],
        "database": database["MYSQL_DATABASE"],
        "charset": "utf8mb4",
    }


def sql(database: dict[str, str], query: str, params: tuple = ()) -> list[tuple]:
    """Run one statement straight against the test database (autocommit)."""
    connection = MySQLdb.connect(**connect_kwargs(database), autocommit=True)
    try:
        cursor = connection.cursor()
        cursor.execute(query, params or None)
        return list(cursor.fetchall())
    finally:
        connection.close()


def connections_opened(database: dict[str, str]) -> int:
    """How many connections the database server has accepted since it started: from every client of the server."""
    return int(sql(database, "SHOW GLOBAL STATUS LIKE 'Connections'")[0][1])


def statement_waits(database: dict[str, str], statement_start: str) -> bool:
    """True while a session on this database runs a statement beginning with `statement_start` (say, blocked on a
    lock); sessions on other databases (another test process's, on a shared MYSQL_HOST) do not count."""
    waiting = sql(
        database,
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST"
        " WHERE INFO LIKE %s AND DB = DATABASE() AND ID <> CONNECTION_ID()",
        (statement_start.replace("%", "\\%") + "%",),
    )
    return waiting[0][0] > 0
