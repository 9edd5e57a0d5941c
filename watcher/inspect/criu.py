"""CRIU's image files, decoded with CRIU's own definitions. A codec: bytes in, messages out, no I/O.

The definitions are CRIU's ``images/*.proto`` as go-criu carries them, compiled for Python at setup
(scripts/criu/build-images-py.sh) into ``watcher/inspect/criu_pb/``, which git ignores: lpm holds no copy
of CRIU's code, and no decoder of its own for CRIU's messages. What is lpm's here is only the framing
CRIU wraps them in (criu/protobuf.c, as go-criu's crit reads it): a 32-bit magic (after the
IMG_COMMON or IMG_SERVICE magic), then entries, each a 32-bit little-endian length and one message.
The pagemap image's first entry is its head, the rest its entries.

The modules are imported by name at run time (``importlib``), so a tree where setup never compiled them
still runs every other command, and ``lpm inspect`` says what is missing.
"""

from __future__ import annotations

import importlib
import struct
from types import ModuleType
from typing import Any

from watcher.errors import ArchiveError, LpmError

PACKAGE = "watcher.inspect.criu_pb"

_U32 = struct.Struct("<I")
# An entry is one message of a small image: a process's core or mm is a few KiB. A length past this is a
# damaged or hostile image, not something to allocate.
ENTRY_CAP = 4 << 20


class DefinitionsMissing(LpmError):
    """CRIU's image definitions were never compiled here (or their protobuf runtime is missing)."""


class ImageDecodeError(ArchiveError):
    """A CRIU image in the archive is not what its name says, or is cut short."""


_modules: dict[str, ModuleType] = {}


def module(name: str) -> ModuleType:
    """The compiled definitions of CRIU's ``name.proto`` (``criu_core``, ``fdinfo``, ...), or ``magic``."""
    found = _modules.get(name)
    if found is not None:
        return found
    try:
        found = importlib.import_module(f"{PACKAGE}.{name}" if name == "magic" else f"{PACKAGE}.{name}_pb2")
    except ModuleNotFoundError as err:
        missing = err.name or name
        if missing.startswith("google"):
            raise DefinitionsMissing(f"CRIU's image definitions need the Python package 'protobuf' ({err}); "
                                     "install lpm's dependencies (scripts/setup, or lock/image.txt)") from None
        raise DefinitionsMissing(
            f"CRIU's image definitions are missing: no module {PACKAGE}.{name} (compiled from go-criu's copy of "
            "CRIU's .proto files by scripts/criu/build-images-py.sh, which scripts/setup runs)") from None
    except ImportError as err:  # a runtime older than the protoc that wrote them, for one
        raise DefinitionsMissing(f"CRIU's image definitions ({PACKAGE}) do not load: {err}") from None
    _modules[name] = found
    return found


def message(proto: str, name: str) -> Any:
    """The message class ``name`` of CRIU's ``proto`` definitions (e.g. ``("pstree", "pstree_entry")``)."""
    return getattr(module(proto), name)


def magic(name: str) -> int:
    """CRIU's magic number for an image type (``"PAGEMAP"``), from magic.h as go-criu carries it."""
    table: dict[str, int] = module("magic").BY_NAME
    try:
        return table[name]
    except KeyError:
        raise DefinitionsMissing(f"CRIU's magic table ({PACKAGE}.magic) has no {name}") from None


def decode(where: str, data: bytes, kind: str, entry: Any, head: Any = None) -> list[Any]:
    """The messages of one image file: ``kind`` its CRIU magic name, ``entry`` the class of its entries and
    ``head`` that of a first entry of another type (the pagemap's head)."""
    view = memoryview(data)
    if len(view) < 4:
        raise ImageDecodeError(f"{where}: {len(view)} bytes, too short for a CRIU image")
    (found,) = _U32.unpack_from(view, 0)
    pos = 4
    if found in (magic("IMG_COMMON"), magic("IMG_SERVICE")):
        if len(view) < 8:
            raise ImageDecodeError(f"{where}: ends inside its magic")
        (found,) = _U32.unpack_from(view, 4)
        pos = 8
    if found != magic(kind):
        raise ImageDecodeError(f"{where}: magic {found:#x} is not CRIU's {kind} ({magic(kind):#x})")
    messages: list[Any] = []
    while pos < len(view):
        if pos + 4 > len(view):
            raise ImageDecodeError(f"{where}: ends inside the length of entry {len(messages)} (byte {pos})")
        (size,) = _U32.unpack_from(view, pos)
        pos += 4
        if size > ENTRY_CAP:
            raise ImageDecodeError(f"{where}: entry {len(messages)} claims {size} bytes, over the {ENTRY_CAP} cap")
        if pos + size > len(view):
            raise ImageDecodeError(f"{where}: entry {len(messages)} is cut short ({len(view) - pos} of {size} bytes)")
        cls = head if head is not None and not messages else entry
        parsed = cls()
        try:
            parsed.ParseFromString(bytes(view[pos : pos + size]))
        except Exception as err:  # protobuf's DecodeError and friends, named once here  # noqa: BLE001
            raise ImageDecodeError(f"{where}: entry {len(messages)} is not a valid {cls.DESCRIPTOR.name} "
                                   f"({err})") from None
        messages.append(parsed)
        pos += size
    return messages
