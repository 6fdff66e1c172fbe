"""Errors the kit raises inside a request, each sent as an exception of base.thrift.

Handlers and db.py raise these; GuardedProcessor (processor.py) turns each into the service's own class of the
exception named by `thrift_name`, which every method declares. The form of a request_id is here too, so that
cli.py (which imports no MySQL code) refuses any other before sending it.
"""

import re

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
REQUEST_ID_FORM = "1 to 64 characters of A-Z a-z 0-9 . _ : -"


class KitError(Exception):
    """Sent to the client as base.thrift's exception `thrift_name`, with `fields`."""

    thrift_name = ""

    def __init__(self, message: str, **fields: str) -> None:
        super().__init__(message)
        self.fields = {"message": message, **fields}


class DatabaseUnavailable(KitError):
    """The database could not be reached, or did not answer in time."""

    thrift_name = "Unavailable"


class BadRequestId(KitError):
    """A write's request_id is not of the form REQUEST_ID."""

    thrift_name = "InvalidArgument"

    def __init__(self, message: str) -> None:
        super().__init__(message, field="request_id")


class BadCursor(KitError):
    """A page cursor this service did not return (or one of another list)."""

    thrift_name = "InvalidArgument"

    def __init__(self, message: str) -> None:
        super().__init__(message, field="cursor")


class DuplicateKey(KitError):
    """A write would duplicate a unique key (MySQL error 1062): it conflicts with a row that exists."""

    thrift_name = "Conflict"


class RequestIdReused(KitError):
    """A request_id already applied with other arguments or by another method."""

    thrift_name = "Conflict"


class ContractError(Exception):
    """The IDL or the handler breaks a rule the kit relies on; found at start-up."""
