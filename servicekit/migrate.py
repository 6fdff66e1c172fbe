"""The migration runner: numbered SQL files, applied in order, once each.

The kit's own migrations (servicekit/migrations: the idempotent-write record)
run first, tracked in `kit_schema_migrations`; then the service's, tracked in
`schema_migrations`. A named lock per database serializes servers that start
at the same time. Each file is recorded with a digest of its statements, so that
one edited after it ran is refused rather than silently skipped. db.py's
`migrate()` calls `apply()`.
"""

import hashlib
import json
import re
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import MySQLdb

from servicekit import mysql
from servicekit.errors import DatabaseUnavailable

KIT_MIGRATIONS = Path(__file__).with_name("migrations")
MIGRATION_NAME = re.compile(r"(\d+)_[^/]+\.sql")
MAX_VERSION = 2**31 - 1  # the version column is an INT
# Which table records which directory's files: never the same for two directories.
KIT_TABLE, SERVICE_TABLE = "kit_schema_migrations", "schema_migrations"
DELIMITER_LINE = re.compile(r"\s*DELIMITER\s+(\S+)\s*", re.I)
NO_SUCH_TABLE, NO_SUCH_COLUMN, TABLE_ACCESS_DENIED = 1146, 1054, 1142
# What a digest sees of a statement (digest()): quoted text (strings, `identifiers`) as it is; any run of whitespace
# and comments as one space, but for the comments MySQL and MariaDB run (/*! */, /*M! */, and /*+ */ hints).
QUOTED_OR_SPACE = re.compile(
    r"""('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|`[^`]*`)"""
    r"|(?:\s|--(?=\s|\Z)[^\n]*|#[^\n]*|/\*(?![!+]|M!).*?\*/)+",
    re.S,
)
# applied_at_ms of a file begun but not yet applied whole: what a run killed mid-file (SIGKILL, the database
# lost), or one whose statement past the first failed, leaves, for the next run to refuse the file rather than run
# again statements that may have taken effect (a restart policy runs it again at once, before anyone reads why).
UNFINISHED = 0
# What stops a process (docker stop, Ctrl-C) waits while a file runs: MySQL commits each DDL statement at
# once, so a file cut short between statements, or before its record, would fail every later start.
HELD_SIGNALS = {signal.SIGTERM, signal.SIGINT}


class MigrationError(Exception):
    """A migration file is misnamed, shares its number with another, differs from the one applied (in name or
    statements), fails, or an earlier run left it unfinished."""


def apply(arguments: dict, service_migrations: Path, lock_timeout: int) -> list[str]:
    """Apply the kit's, then the service's pending migrations; return their names.

    MySQL commits DDL implicitly, so each file should be one logical change.
    Raises MigrationError before any file runs if a .sql file is not
    NNN_description.sql, two share a number, one already applied has
    another name or other statements now, or an earlier run left one
    unfinished; and when the database refuses a statement (the ones before
    it stay applied, and the file stays recorded as begun);
    DatabaseUnavailable if another process holds the lock past
    `lock_timeout` seconds.
    """
    kit_files, service_files = numbered(KIT_MIGRATIONS), numbered(service_migrations)
    # No read or write timeout: GET_LOCK waits up to lock_timeout, and a migration (an ALTER TABLE of a big table)
    # may take minutes. Each file's record commits as soon as it is written.
    untimed = {key: value for key, value in arguments.items() if key not in ("read_timeout", "write_timeout")}
    connection = MySQLdb.connect(**{**untimed, "autocommit": True})
    try:
        cursor = connection.cursor()
        cursor.execute("SELECT GET_LOCK(LEFT(CONCAT('migrations:', DATABASE()), 64), %s)", (lock_timeout,))
        if cursor.fetchone()[0] != 1:
            raise DatabaseUnavailable(f"another process held the migration lock for {lock_timeout} s")
        try:
            directories = [(kit_files, KIT_TABLE), (service_files, SERVICE_TABLE)]
            applied = [_applied(cursor, files, table) for files, table in directories]
            return [
                name
                for (files, table), done in zip(directories, applied, strict=True)
                for name in _apply_pending(cursor, files, table, done)
            ]
        finally:
            # A lost session has released the lock with it: failing here would hide why the migration stopped.
            with suppress(MySQLdb.Error):
                cursor.execute("SELECT RELEASE_LOCK(LEFT(CONCAT('migrations:', DATABASE()), 64))")
    finally:
        connection.close()


def numbered(directory: Path) -> dict[int, Path]:
    """A directory's .sql files by number (none if it does not exist); other files, and hidden ones
    (an editor's lock file), are not migrations."""
    files: dict[int, Path] = {}
    candidates = directory.iterdir() if directory.is_dir() else []
    for path in sorted(p for p in candidates if p.suffix.lower() == ".sql" and not p.name.startswith(".")):
        if not (match := MIGRATION_NAME.fullmatch(path.name)):
            raise MigrationError(f"{path}: a migration is named NNN_description.sql (digits, then _)")
        if (version := int(match[1])) > MAX_VERSION:
            raise MigrationError(f"{path}: numbered past {MAX_VERSION}, the largest schema_migrations records")
        if version in files:
            raise MigrationError(f"{files[version].name} and {path.name} in {directory} share the number {version}")
        files[version] = path
    return dict(sorted(files.items()))


def _applied(cursor, files: dict[int, Path], table: str) -> set[int]:
    """The numbers `table` records as applied; MigrationError if one of `files` has another name, or other
    statements, than recorded."""
    records = _records(cursor, table)
    for version, name, applied_at_ms, _ in records:
        if applied_at_ms == UNFINISHED:
            raise MigrationError(_cut_short(table, version, name))
    applied = {version: name for version, name, _, _ in records}
    for version, path in files.items():
        if version in applied and applied[version] != path.name:
            raise MigrationError(
                f"migration {version} was applied as {applied[version]}, but the file numbered {version}"
                f" is {path.name}: give a new change a new number, or rename the file back"
                " (or, if this database is another service's, such as the template's example, use a new one)"
            )
        if version not in applied and applied and version < max(applied):
            raise MigrationError(
                f"{path.name} is numbered below {applied[max(applied)]}, which has run: number it past {max(applied)}"
            )
    _check_digests(cursor, table, {version: files[version] for version in applied if version in files}, records)
    return set(applied)


def _records(cursor, table: str) -> tuple:
    """`table`'s rows (version, name, applied_at_ms, statements_sha256); the table created if missing, and its
    digest column added if an older kit created it without one."""
    # `table` is one of the two constants above, never input: identifiers cannot be parameters.
    query = f"SELECT version, name, applied_at_ms, statements_sha256 FROM {table}"  # noqa: S608
    try:
        cursor.execute(query)
    except MySQLdb.Error as error:
        # Each changed only when it must: CREATE TABLE IF NOT EXISTS needs the CREATE privilege even when the table
        # exists, and a server whose user may only read and write must start on a schema migrated by another.
        code = mysql.error_code(error)
        if code == NO_SUCH_TABLE:
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {table} ("
                " version INT NOT NULL PRIMARY KEY,"
                " name VARCHAR(255) NOT NULL,"
                " applied_at_ms BIGINT NOT NULL,"
                " statements_sha256 CHAR(64) NULL"
                ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
            )
            return ()
        if code != NO_SUCH_COLUMN:
            raise
        _add_digest_column(cursor, table)
        cursor.execute(query)
    return cursor.fetchall()


def _add_digest_column(cursor, table: str) -> None:
    """Add statements_sha256 to a tracking table an older kit created; MigrationError if this user may not."""
    try:
        # Nullable: a server of the previous kit, still running during a rolling update, records files without it.
        cursor.execute(f"ALTER TABLE {table} ADD COLUMN statements_sha256 CHAR(64) NULL")
    except MySQLdb.Error as error:
        if mysql.error_code(error) != TABLE_ACCESS_DENIED:
            raise
        raise MigrationError(
            f"{table} lacks the statements_sha256 column this kit records, and this user may not add it"
            f" ({error.args[-1]}): run `python db.py migrate` once as a user who may alter {table}"
        ) from None


def _check_digests(cursor, table: str, applied_files: dict[int, Path], records: tuple) -> None:
    """MigrationError if an applied file's statements differ from those that ran. A file recorded without a digest
    (by an older kit, or finished by hand) is trusted as it is now, and its digest recorded."""
    recorded = {version: recorded_digest for version, _, _, recorded_digest in records}
    for version, path in applied_files.items():
        current = digest(_read(path))
        if recorded[version] is None:
            cursor.execute(
                f"UPDATE {table} SET statements_sha256 = %s WHERE version = %s",  # noqa: S608
                (current, version),
            )
        elif recorded[version] != current:
            raise MigrationError(_edited(table, version, path.name))


def digest(file_statements: list[str]) -> str:
    """The SHA-256 (hex) of a file's statements, blind to edits that cannot change what runs: a run of whitespace
    and comments counts as one space; where the delimiter is set and line endings (read_text reads CRLF, a Windows
    checkout's, as LF) do not count."""
    seen = [QUOTED_OR_SPACE.sub(lambda match: match[1] or " ", statement).strip() for statement in file_statements]
    return hashlib.sha256(json.dumps([statement for statement in seen if statement]).encode()).hexdigest()


def _edited(table: str, version: int, name: str) -> str:
    """Why an applied file whose statements have changed is refused, and the ways on."""
    return (
        f"{name} was edited after it was applied (its statements differ from those that ran): a migration that has"
        " run is never edited, so undo the edit and put the change in a new numbered file (on a scratch or"
        " development database, drop the database and create it again; if this database already matches the"
        f" edited file, forget the old digest ({_forget_digest(table, version)}) and migrate again)"
    )


def _read(path: Path) -> list[str]:
    """`path`'s statements; MigrationError, in one line, if it is not UTF-8 text or cannot be read."""
    try:
        return statements(path.read_text(encoding="utf-8-sig"))  # a BOM skipped, as the mysql client does
    except UnicodeDecodeError as error:
        byte = error.object[error.start]
        raise MigrationError(f"{path.name} is not UTF-8 text (byte {byte:#x}): save it as UTF-8") from None
    except OSError as error:
        raise MigrationError(f"cannot read {path}: {error.strerror}") from None


def statements(text: str) -> list[str]:
    """A migration's statements: each ends with `;` at the end of a line, or with what a `DELIMITER //` line
    sets, as in the mysql client (for a trigger or a procedure, whose body holds `;`)."""
    delimiter, lines, found = ";", [], []
    for line in text.split("\n"):  # not splitlines(): a form feed or U+2028 in a string literal stays
        if not _started(lines) and (match := DELIMITER_LINE.fullmatch(line)):  # not a column named delimiter
            delimiter = match[1]
        elif (end := line.rstrip()).endswith(delimiter):
            found.append("\n".join([*lines, end.removesuffix(delimiter)]))
            lines = []
        else:
            lines.append(line)
    return [statement for statement in [*found, "\n".join(lines)] if statement.strip()]


def _started(lines: list[str]) -> bool:
    """Whether a statement has begun in `lines` (comments and blank lines are none)."""
    return any(line.strip() and not line.lstrip().startswith(("--", "#")) for line in lines)


def _left(table: str, version: int, failed: int) -> str:
    """What a failed migration leaves: MySQL commits each DDL statement at once, so the ones before stay, and the
    file stays recorded as begun (_run)."""
    if failed == 1:
        return ""
    before = "statement 1 was" if failed == 2 else f"statements 1 to {failed - 1} were"
    return (
        f" ({before} applied, and the file stays recorded as begun: undo that, or take it out of the file, and"
        f" forget the record ({_forget(table, version)}); then migrate again)"
    )


def _cut_short(table: str, version: int, name: str) -> str:
    """Why a file an earlier run began and never finished is refused, and the two ways on."""
    return (
        f"{name} did not finish when it last ran (a statement past its first failed, or the process was killed or"
        " lost the database mid-file), so any of its statements may have taken effect: compare the schema with the"
        f" file, then finish it by hand and record it ({_record(table, version)}), or undo what it did and forget it"
        f" ({_forget(table, version)}), and migrate again"
    )


def _record(table: str, version: int) -> str:
    """The SQL that records a file finished by hand as applied."""
    return f"UPDATE {table} SET applied_at_ms = UNIX_TIMESTAMP() * 1000 WHERE version = {version}"  # noqa: S608


def _forget_digest(table: str, version: int) -> str:
    """The SQL that has the next run trust a file as it is now."""
    return f"UPDATE {table} SET statements_sha256 = NULL WHERE version = {version}"  # noqa: S608


def _forget(table: str, version: int) -> str:
    """The SQL that forgets a file, for the next run to run it afresh."""
    return f"DELETE FROM {table} WHERE version = {version}"  # noqa: S608


def _apply_pending(cursor, files: dict[int, Path], table: str, applied: set[int]) -> list[str]:
    applied_now = []
    for version, path in files.items():
        if version in applied:
            continue
        file_statements = _read(path)
        with _signals_held():
            cursor.execute(
                f"INSERT INTO {table} (version, name, applied_at_ms) VALUES (%s, %s, %s)",  # noqa: S608
                (version, path.name, UNFINISHED),
            )
            _run(cursor, table, version, path.name, file_statements)
            # Recorded once the file is whole: one begun, then finished by hand, is trusted as it is then.
            cursor.execute(
                f"UPDATE {table} SET applied_at_ms = %s, statements_sha256 = %s WHERE version = %s",  # noqa: S608
                (int(time.time() * 1000), digest(file_statements), version),
            )
        applied_now.append(path.name)
    return applied_now


def _run(cursor, table: str, version: int, name: str, file_statements: list[str]) -> None:
    """Run a file's statements in order; MigrationError naming the one the database refused.

    Only a file whose first statement was refused is forgotten: nothing of it took effect, and the next run runs
    it afresh (after a lock waited for too long, the next start tries again). Past the first, or with the database
    lost, it stays recorded as begun, for the next run to refuse: run again, it would repeat what took effect.
    """
    for number, statement in enumerate(file_statements, 1):
        try:
            cursor.execute(statement)
        except MySQLdb.Error as error:
            code = mysql.error_code(error)
            if code in mysql.UNAVAILABLE:
                raise  # the database is down, or gone mid-statement: not the file's fault
            if number == 1:
                cursor.execute(f"DELETE FROM {table} WHERE version = %s", (version,))  # noqa: S608
                if code in mysql.RETRYABLE:
                    raise  # a lock was held too long: not the file's fault
            left = _left(table, version, number)
            raise MigrationError(f"{name}, statement {number}: {error.args[-1]}{left}") from None


@contextmanager
def _signals_held() -> Iterator[None]:
    """HELD_SIGNALS wait until the block ends, then act as they would have (in this thread: start-up has no other)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
