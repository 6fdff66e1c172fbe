"""The migration runner: numbered SQL files, applied in order, once each.

The kit's own migrations (servicekit/migrations: the idempotent-write record)
run first, tracked in `kit_schema_migrations`; then the service's, tracked in
`schema_migrations`. A named lock per database serializes servers that start
at the same time. db.py's `migrate()` calls `apply()`.
"""

import re
import time
from pathlib import Path

import MySQLdb

from servicekit.errors import DatabaseUnavailable

KIT_MIGRATIONS = Path(__file__).with_name("migrations")
# Which table records which directory's files: never the same for two directories.
KIT_TABLE, SERVICE_TABLE = "kit_schema_migrations", "schema_migrations"


def apply(arguments: dict, service_migrations: Path, lock_timeout: int) -> list[str]:
    """Apply the kit's, then the service's pending migrations; return their names.

    MySQL commits DDL implicitly, so each file should be one logical change.
    Raises DatabaseUnavailable if another process holds the lock past `lock_timeout` seconds.
    """
    connection = MySQLdb.connect(**arguments)
    try:
        cursor = connection.cursor()
        cursor.execute("SELECT GET_LOCK(LEFT(CONCAT('migrations:', DATABASE()), 64), %s)", (lock_timeout,))
        if cursor.fetchone()[0] != 1:
            raise DatabaseUnavailable(f"another process held the migration lock for {lock_timeout} s")
        try:
            return _apply_directory(cursor, KIT_MIGRATIONS, KIT_TABLE) + _apply_directory(
                cursor, service_migrations, SERVICE_TABLE
            )
        finally:
            cursor.execute("SELECT RELEASE_LOCK(LEFT(CONCAT('migrations:', DATABASE()), 64))")
    finally:
        connection.close()


def _apply_directory(cursor, directory: Path, table: str) -> list[str]:
    # `table` is one of the two constants above, never input: identifiers cannot be parameters.
    cursor.execute(
        f"CREATE TABLE IF NOT EXISTS {table} ("
        " version INT NOT NULL PRIMARY KEY,"
        " name VARCHAR(255) NOT NULL,"
        " applied_at_ms BIGINT NOT NULL"
        ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
    )
    cursor.execute(f"SELECT version FROM {table}")  # noqa: S608
    applied = {row[0] for row in cursor.fetchall()}
    applied_now = []
    for path in sorted(directory.glob("[0-9]*.sql")):
        version = int(path.name.split("_", 1)[0])
        if version in applied:
            continue
        for statement in re.split(r";\s*$", path.read_text(encoding="utf-8"), flags=re.M):
            if statement.strip():
                cursor.execute(statement)
        cursor.execute(
            f"INSERT INTO {table} (version, name, applied_at_ms) VALUES (%s, %s, %s)",  # noqa: S608
            (version, path.name, int(time.time() * 1000)),
        )
        applied_now.append(path.name)
    return applied_now
