"""Opaque page cursors for keyset pagination: encode where a page ended, decode it back.

A list RPC returns `next_cursor` ("" on the last page) and takes it back as
`cursor`. The cursor names the list it belongs to (`kind`, and `scope`, such
as the id whose items are listed), so one list's cursor, or a damaged one, is
BadCursor (InvalidArgument); unsigned, a well-formed forgery moves only the page's start.
"""

import base64
import binascii

from servicekit.errors import BadCursor


def encode_cursor(kind: str, last_id: int, scope: int = 0) -> str:
    """The cursor of the page after the one that ended with `last_id`."""
    return base64.urlsafe_b64encode(f"{kind}:{scope}:{last_id}".encode()).decode()


def decode_cursor(cursor: str | None, kind: str, scope: int = 0) -> int | None:
    """The last id of the previous page; None for "" (the first page)."""
    if not cursor:
        return None
    try:
        found_kind, found_scope, last_id = base64.urlsafe_b64decode(cursor.encode()).decode().split(":")
        if found_kind == kind and int(found_scope) == scope:
            return int(last_id)
    except (ValueError, binascii.Error, UnicodeError):
        pass
    raise BadCursor("cursor is not one this service returned")
