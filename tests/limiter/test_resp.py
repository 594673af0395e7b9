"""The check script's calls packed by ``limiter.store.resp``: byte for byte hiredis's."""

from __future__ import annotations

from typing import Any

import hiredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from limiter.store import resp

pytestmark = pytest.mark.timeout(120)

SHA = "e0e1f1ab3c2b9d8e7f6a5b4c3d2e1f0a9b8c7d6e"
text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)  # UTF-8 encodable
argument = st.one_of(
    st.binary(max_size=48),  # remembered up to 32 bytes, packed each time beyond
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    text,
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
)


def hiredis_evalsha(sha: str, keys: list[str] | list[str | bytes], args: list[Any]) -> bytes:
    packed: bytes = hiredis.pack_command(("EVALSHA", sha, len(keys), *keys, *args))
    return packed


@settings(max_examples=400, deadline=None)
@given(
    keys=st.lists(st.one_of(text, st.binary(max_size=8)), max_size=12),
    args=st.lists(argument, max_size=12),
)
def test_any_call_packs_as_hiredis_packs_it(keys: list[str | bytes], args: list[object]) -> None:
    try:
        expected = hiredis_evalsha(SHA, keys, args)
    except TypeError:  # a bool: refused alike
        with pytest.raises(TypeError):
            resp.pack_evalsha(SHA, len(keys), (*keys, *args))
        return
    packed = resp.pack_evalsha(SHA, len(keys), (*keys, *args))
    assert packed == expected
    # a second time from what it remembered
    assert resp.pack_evalsha(SHA, len(keys), (*keys, *args)) == packed


def test_a_check_calls_shape_packs_as_hiredis_packs_it() -> None:
    keys, args = [], [0, 3, "0", 1765000000000]
    for i in range(3):
        keys += [f"rw:{{rw:acme}}:c:s:60000:user:{i}", f"rw:{{rw:acme}}:bk:key:user:{i}"]
        args += [b"s", b"100", b"60000", b"1", b"1"]
    keys.append("rw:{rw:acme}:c:s:60000:usér:ü")  # not ASCII: hiredis packs the call
    args += [b"s", b"100", b"60000", b"1", b"1"]
    assert resp.pack_evalsha(SHA, len(keys), (*keys, *args)) == hiredis_evalsha(SHA, keys, args)
    assert resp.pack_evalsha(SHA, 2, (*keys[:2], *args)) == hiredis_evalsha(SHA, keys[:2], args)


def test_remembered_arguments_stay_bounded() -> None:
    for i in range(resp.MAX_REMEMBERED + 10):
        resp.pack_evalsha(SHA, 0, (b"%d" % i,))
    assert 0 < len(resp._packed_arguments) <= resp.MAX_REMEMBERED
    long = b"x" * (resp.MAX_REMEMBERED_ARGUMENT + 1)
    resp.pack_evalsha(SHA, 0, (long,))
    assert long not in resp._packed_arguments
