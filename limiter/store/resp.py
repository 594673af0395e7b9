"""Redis's wire format (RESP) for the check script's calls, packed faster than hiredis does.

A call of the check script carries seven arguments or more per check: its keys, then per
check the algorithm's code, the limit, the window, the cost and the count of block keys.
hiredis's ``pack_command`` formats every argument on its own, about 130 ns each: at 2,048
checks a call, packing took a sixth of the limiter's CPU under ``/v1/batch``.

Here the keys (text, ASCII in all but rare cases) are packed as one string and encoded
once, and the arguments, mostly the same few bytes objects over and over (the store keeps
each shape of check's arguments encoded), are packed once each and then looked up. Anything
else (a key that is not ASCII, an argument of another type) is left to hiredis, which
gives the same bytes.
"""

from __future__ import annotations

from typing import Any, cast

import hiredis

MAX_REMEMBERED_ARGUMENT = 32  # bytes: the shapes' numbers and codes, not events' entries
MAX_REMEMBERED = 4096  # arguments kept packed (forgotten all at once beyond)
_packed_arguments: dict[bytes, bytes] = {}


def pack_command(*command: str | int | bytes) -> bytes:
    """``command`` as hiredis packs it."""
    # hiredis's stub types its argument as a 1-tuple; it takes any number of parts
    packed: bytes = hiredis.pack_command(command)  # type: ignore[arg-type]
    return packed


def pack_evalsha(sha: str, numkeys: int, keys_and_args: tuple[Any, ...]) -> bytes:
    """``EVALSHA sha numkeys key… arg…`` packed: the same bytes as ``pack_command``."""
    keys = keys_and_args[:numkeys]
    try:
        text = "".join(keys)
    except TypeError:  # a key that is not text
        return pack_command("EVALSHA", sha, numkeys, *keys_and_args)
    if not text.isascii() or not sha.isascii():  # a character's length is not its bytes'
        return pack_command("EVALSHA", sha, numkeys, *keys_and_args)
    count = str(numkeys)
    head = [f"*{3 + len(keys_and_args)}\r\n$7\r\nEVALSHA\r\n${len(sha)}\r\n{sha}\r\n"]
    head.append(f"${len(count)}\r\n{count}\r\n")
    head += [f"${len(key)}\r\n{key}\r\n" for key in keys]
    remembered = _packed_arguments.get
    try:
        args = [remembered(arg) or _pack_argument(arg) for arg in keys_and_args[numkeys:]]
    except TypeError:  # an argument of another type
        return pack_command("EVALSHA", sha, numkeys, *keys_and_args)
    return "".join(head).encode() + b"".join(args)


def _pack_argument(arg: object) -> bytes:
    cls = arg.__class__
    if cls is bytes:
        value = cast(bytes, arg)
        packed = b"$%d\r\n%s\r\n" % (len(value), value)
        if len(value) <= MAX_REMEMBERED_ARGUMENT:
            if len(_packed_arguments) >= MAX_REMEMBERED:
                _packed_arguments.clear()
            _packed_arguments[value] = packed
        return packed
    if cls is int:
        value = b"%d" % cast(int, arg)
    elif cls is str:
        value = cast(str, arg).encode()
    else:  # bool, float, …: hiredis's own formatting
        raise TypeError(f"an argument of type {cls.__name__}")
    return b"$%d\r\n%s\r\n" % (len(value), value)
