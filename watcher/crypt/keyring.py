"""The key-encryption keys: one 32-byte file per key in ``--encryption-keys DIR``, its name the key ID.

In the DaemonSet DIR is a Secret volume (deploy/README.md), so the agent needs no ``secrets``
permission. The kubelet writes such a volume as ``..<timestamp>/`` holding the files, ``..data``
linking to it, and one link per key (``k1 -> ..data/k1``): names starting with ``..`` are that
machinery and skipped, links are followed only while they stay inside DIR. Anything else that is
not a well-named regular file of exactly 32 bytes refuses the whole directory, naming the entry
and the reason: an agent that silently dropped a key would write or read with another. No message,
``repr`` or log line ever holds key bytes.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from watcher.crypt import seal
from watcher.errors import KeyringError, KeyUnavailable, WrongKey

KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_KUBELET_PREFIX = ".."
_NAME_SHOWN = 80


@dataclass(frozen=True)
class DumpKey:
    """One dump's fresh data key and the key-encryption key that will wrap it for the manifest."""

    key_id: str
    data_key: bytes = field(repr=False)
    _kek: bytes = field(repr=False)

    def wrap(self, context: str) -> seal.Sealed:
        return seal.wrap(self._kek, self.data_key, self.key_id, context)


class Keyring:
    """The key-encryption keys by ID, and the one new dumps are sealed with (``current``)."""

    def __init__(self, keys: dict[str, bytes], current: str | None = None) -> None:
        if not keys:
            raise KeyringError("no encryption keys")
        for key_id, key in keys.items():
            if KEY_ID.fullmatch(key_id) is None or len(key) != seal.KEY_SIZE:
                raise KeyringError(f"encryption key {key_id[:_NAME_SHOWN]!r}: not a valid key ID and 32-byte key")
        chosen = current if current is not None else max(keys)
        if chosen not in keys:
            raise KeyringError(f"encryption key ID {chosen[:_NAME_SHOWN]!r} (--encryption-key-id) is not among the "
                               f"keys: {', '.join(sorted(keys))}")
        self._keys = dict(keys)
        self.current = chosen

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._keys))

    def __repr__(self) -> str:
        return f"Keyring(ids={self.ids!r}, current={self.current!r})"

    def new_dump_key(self) -> DumpKey:
        return DumpKey(self.current, os.urandom(seal.KEY_SIZE), self._keys[self.current])

    def data_key(self, sealed: seal.Sealed, context: str, where: str) -> bytes:
        """Unwrap a dump's data key; KeyUnavailable or WrongKey naming the key ID otherwise."""
        kek = self._keys.get(sealed.key_id)
        if kek is None:
            raise KeyUnavailable(f"{where}: encrypted with key {sealed.key_id!r}, which is not among the encryption "
                                 f"keys ({', '.join(self.ids)})", sealed.key_id)
        try:
            return seal.unwrap(kek, sealed, context)
        except seal.SealError:
            raise WrongKey(f"{where}: key {sealed.key_id!r} does not open its data key (another key under that "
                           "ID, or an altered manifest)", sealed.key_id) from None


def no_keys(sealed: seal.Sealed, where: str) -> KeyUnavailable:
    """The error for an encrypted dump read with no keys configured at all."""
    return KeyUnavailable(f"{where}: encrypted with key {sealed.key_id!r}, and no encryption keys are configured "
                          "(--encryption-keys, env LPM_ENCRYPTION_KEYS)", sealed.key_id)


def load(directory: Path, current: str | None = None) -> Keyring:
    """Read every key file of ``directory``; KeyringError naming each bad entry and why."""
    where = f"encryption keys {str(directory)!r}"
    try:
        real = directory.resolve(strict=True)
        names = sorted(os.listdir(real))
    except OSError as err:
        raise KeyringError(f"{where}: cannot read the directory ({err.strerror})") from None
    keys: dict[str, bytes] = {}
    problems: list[str] = []
    for name in names:
        if name.startswith(_KUBELET_PREFIX):
            continue  # the kubelet's Secret volume machinery (..data, ..<timestamp>)
        try:
            keys[name] = _read_key(real, name)
        except KeyringError as err:
            problems.append(str(err))
    if problems:
        raise KeyringError(f"{where}: refused: {'; '.join(problems)}")
    if not keys:
        raise KeyringError(f"{where}: holds no key files (one 32-byte file per key, its name the key ID)")
    if current is not None and current not in keys:
        raise KeyringError(f"{where}: --encryption-key-id {current[:_NAME_SHOWN]!r} is not among its keys "
                           f"({', '.join(sorted(keys))})")
    return Keyring(keys, current)


def _read_key(real: Path, name: str) -> bytes:
    shown = repr(name[:_NAME_SHOWN] + ("..." if len(name) > _NAME_SHOWN else ""))
    if KEY_ID.fullmatch(name) is None:
        raise KeyringError(f"entry {shown}: not a key ID (letters, digits, '.', '_', '-'; at most 128, "
                           "starting with a letter or digit)")
    try:
        target = (real / name).resolve(strict=True)
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Python 3.11)
        raise KeyringError(f"key file {shown}: is a dangling or looping symlink") from None
    if real not in target.parents:
        raise KeyringError(f"key file {shown}: is a symlink leading out of the directory")
    try:
        # Checked before opening: opening a device node can act (rewind a tape); O_NONBLOCK for a FIFO.
        if not stat.S_ISREG(os.stat(target, follow_symlinks=False).st_mode):
            raise KeyringError(f"key file {shown}: is not a regular file")
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise KeyringError(f"key file {shown}: cannot open ({err.strerror})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise KeyringError(f"key file {shown}: is not a regular file")
        data = os.read(fd, seal.KEY_SIZE + 1)
    except OSError as err:
        raise KeyringError(f"key file {shown}: cannot read ({err.strerror})") from None
    finally:
        os.close(fd)
    if len(data) != seal.KEY_SIZE:
        size = "more than 32" if len(data) > seal.KEY_SIZE else str(len(data))
        raise KeyringError(f"key file {shown}: holds {size} bytes; a key is exactly 32 bytes "
                           "(head -c 32 /dev/urandom)")
    return data
