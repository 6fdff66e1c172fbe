"""Page cursors: what a list returns as next_cursor comes back as the same place, and nothing else does."""

import pytest

from servicekit.errors import BadCursor
from servicekit.paging import decode_cursor, encode_cursor


def test_a_cursor_comes_back_as_the_last_id_of_its_page():
    assert decode_cursor(encode_cursor("items", 41), "items") == 41
    assert decode_cursor(encode_cursor("entries", 7, scope=3), "entries", scope=3) == 7


def test_an_empty_cursor_is_the_first_page():
    assert decode_cursor("", "items") is None
    assert decode_cursor(None, "items") is None


@pytest.mark.parametrize(
    "cursor",
    ["garbage", "!!!", "bm90OmFjY291bnRz", encode_cursor("other", 5), encode_cursor("entries", 5, scope=4), "\u00e9"],
)
def test_a_forged_or_foreign_cursor_is_bad(cursor):
    with pytest.raises(BadCursor) as error:
        decode_cursor(cursor, "entries", scope=3)
    assert error.value.fields["field"] == "cursor"
