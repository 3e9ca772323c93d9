"""The answers of the edge's hit path: ``answer`` (edge/responses.py, pure). The access
log sending them: tests/test_accesslog.py."""

from __future__ import annotations

import pytest
from atcdn.core.ranges import RangeNotSatisfiable
from atcdn.edge.cache import make_entry
from atcdn.edge.responses import VARY_ACCEPT, answer

BODY = bytes(range(256)) * 4
ENTRY = make_entry('"bafy.thumb.jpeg"', "image/jpeg", len(BODY), body=BODY)


def test_answer_whole_head_and_not_modified():
    whole = answer(ENTRY, {}, head_only=False)
    assert whole is not None and whole.status == 200 and whole.body == BODY
    assert (b"content-length", str(len(BODY)).encode()) in whole.headers
    head = answer(ENTRY, {}, head_only=True)
    assert head is not None and head.status == 200 and head.body == b""
    assert head.headers == whole.headers  # HEAD: the GET's headers, no body
    same = answer(ENTRY, {b"if-none-match": b'W/"other", "bafy.thumb.jpeg"'}, head_only=False,
                  vary=True)
    assert same is not None and same.status == 304 and same.body == b""
    assert VARY_ACCEPT in same.headers and (b"etag", ENTRY.etag) in same.headers
    other = answer(ENTRY, {b"if-none-match": b'"other"'}, head_only=False, vary=True)
    assert other is not None and other.status == 200 and VARY_ACCEPT in other.headers


def test_answer_ranges():
    part = answer(ENTRY, {b"range": b"bytes=10-19"}, head_only=False)
    assert part is not None and part.status == 206 and part.body == BODY[10:20]
    assert (b"content-range", f"bytes 10-19/{len(BODY)}".encode()) in part.headers
    assert (b"content-length", b"10") in part.headers
    assert [h for h in part.headers if h[0] == b"content-length"] == [(b"content-length", b"10")]
    stale = answer(ENTRY, {b"range": b"bytes=10-19", b"if-range": b'"old"'}, head_only=False)
    assert stale is not None and stale.status == 200 and stale.body == BODY
    with pytest.raises(RangeNotSatisfiable):
        answer(ENTRY, {b"range": f"bytes={len(BODY)}-".encode()}, head_only=False)


def test_answer_leaves_file_entries_to_send_entry():
    on_disk = make_entry('"bafy"', "video/mp4", 10 * 2**20, path="/nonexistent")
    assert answer(on_disk, {}, head_only=False) is None
    assert answer(on_disk, {b"if-none-match": b'"bafy"'}, head_only=False).status == 304
