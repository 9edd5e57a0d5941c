"""A JSON object out of bytes nobody vouched for (archives, the store, the runtime's files).

One function so that every way of not being one - not UTF-8, not JSON, JSON but not an object - is
refused with the same kind of message, naming the thing: ``<what> is not valid JSON (<why>)``.
"""

from __future__ import annotations

import json
from typing import Any, Callable


def json_object(data: bytes | str, what: str, error: Callable[[str], Exception]) -> dict[str, Any]:
    """``data`` decoded as a JSON object, or ``error(message)`` raised."""
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise error(f"{what} is not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise error(f"{what} is not a JSON object")
    return value
