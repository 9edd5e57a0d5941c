"""A JSON object out of bytes nobody vouched for (archives, the store, the ledger, the runtime's files).

One function so that every way of not being one is refused with the same kind of message, naming the
thing: ``<what> is not valid JSON (<why>)``. ``json.loads`` alone lets some through as exceptions no
caller expects - nesting deeper than the interpreter's stack is a ``RecursionError``, an integer of more
than 4300 digits a bare ``ValueError`` - and one such manifest, written by any node, stopped listing and
collection for the whole store. It also takes what lpm must not: ``NaN`` and ``Infinity``, ``1e999`` (a
float that is infinite), a key given twice (the runtimes' Go decoder and Python would each pick one),
UTF-16 text, and ``\\ud800`` (a string that is no Unicode text and fails later, wherever it is encoded).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

MAX_DEPTH = 64
"""Nesting allowed; an OCI spec.dump nests about 7 deep, a manifest 1."""
MAX_NUMBER_CHARS = 40
"""Characters allowed in one number; no field lpm reads needs more than 20 (a 64-bit integer)."""

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class _Refused(ValueError):
    """Raised from inside the decoder's hooks; carries the reason."""


def json_object(data: bytes | str, what: str, error: Callable[[str], Exception]) -> dict[str, Any]:
    """``data`` decoded as a JSON object, or ``error(message)`` raised; never another exception."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        _check_depth(text)
        value = _DECODER.decode(text)
        if _SURROGATE_ESCAPE.search(text):
            _check_text(value)  # escapes may pair up into one character; only a lone half is refused
    except (UnicodeError, _Refused, json.JSONDecodeError) as err:
        raise error(f"{what} is not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise error(f"{what} is not a JSON object")
    return value


def _check_depth(text: str) -> None:
    # Measured before decoding, because the decoder recurses once per level. Brackets inside strings
    # do not nest; the fast path covers every manifest, marker and ledger record.
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return
    depth = 0
    for bracket in _BRACKET.findall(_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        if depth > MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH} levels")


def _integer(digits: str) -> int:
    if len(digits) > MAX_NUMBER_CHARS:
        raise _Refused(f"a number of {len(digits)} digits")
    return int(digits)


def _float(digits: str) -> float:
    if len(digits) > MAX_NUMBER_CHARS:
        raise _Refused(f"a number of {len(digits)} characters")
    value = float(digits)
    if not math.isfinite(value):
        raise _Refused(f"the number {digits} is not finite")
    return value


def _constant(name: str) -> float:
    raise _Refused(f"{name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refused(f"key {key[:64]!r} appears twice in one object")
            seen.add(key)
    return value


# One decoder, made once: json.loads with hooks builds a new one per call, which doubled the
# collector's cost per manifest (it reads 100,000 of them a pass).
_DECODER = json.JSONDecoder(parse_int=_integer, parse_float=_float, parse_constant=_constant,
                            object_pairs_hook=_unique_keys)


def _check_text(value: Any) -> None:
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str):
            item.encode("utf-8")  # UnicodeEncodeError on a lone surrogate
