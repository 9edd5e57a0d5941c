"""Filesystem primitives for the store: no symlinks followed, durable commits, 0700/0600.

Every path below the store root is walked one segment at a time with ``O_NOFOLLOW`` and
directory file descriptors, so a symlink planted anywhere in the store (by a hostile pod
name, a confused operator or another node) is refused instead of followed out of it. The
root itself is resolved once by the caller: operators may mount the volume through a link.

Durability follows the commit protocol in ARCHITECTURE.md: write a temp file under a
dot-name readers ignore, fsync it, rename it into place, fsync the directory. A directory
made here is fsynced into its parent, so a crash cannot leave a committed file whose
directory entry was never written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from watcher.errors import StoreError, StoreUnavailable, UnknownCheckpoint, UnsafeNameError

DIR_MODE = 0o700
FILE_MODE = 0o600
_AWAY = frozenset({errno.EIO, errno.ESTALE, errno.ETIMEDOUT, errno.ENOTCONN, errno.EHOSTDOWN, errno.EHOSTUNREACH,
                   errno.ENETUNREACH, errno.ECONNRESET})
"""What an NFS client (or a failing disk) answers when the server went away: nothing about the bytes."""
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@contextlib.contextmanager
def os_errors(what: str) -> Iterator[None]:
    """Map OSError into StoreError once, naming the thing and the reason."""
    try:
        yield
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreError(f"{what}: no space left on its filesystem") from err
        if err.errno == errno.ELOOP:
            raise UnsafeNameError(f"{what}: is a symlink, refused") from err
        if err.errno in _AWAY:
            raise StoreUnavailable(f"{what}: the store's server or disk failed ({err.strerror or err})") from err
        raise StoreError(f"{what}: {err.strerror or err}") from err


def open_root(path: Path, *, create: bool) -> int:
    """Open the store root; writers create it (0700), readers require it."""
    with os_errors(f"store {path}"):
        if create:
            path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        elif not path.is_dir():
            raise StoreError(f"store {path}: does not exist or is not a directory")
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def open_dir(root_fd: int, segments: Sequence[str], *, create: bool, where: str) -> int:
    """Open ``root/segments...`` as a directory fd without following any symlink.

    With ``create``, missing directories are made 0700 and fsynced into their parent.
    Without it, a missing segment is UnknownCheckpoint.
    """
    fd = os.dup(root_fd)
    try:
        for segment in segments:
            with os_errors(f"{where}: {segment}"):
                try:
                    child = os.open(segment, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise UnknownCheckpoint(f"{where}: {segment} does not exist") from None
                    child = _make_dir(fd, segment)
                except NotADirectoryError:
                    # O_NOFOLLOW|O_DIRECTORY reports a symlink to a directory as ENOTDIR.
                    kind = "a symlink" if _is_link(fd, segment) else "not a directory"
                    raise UnsafeNameError(f"{where}: {segment} is {kind}, refused") from None
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def _make_dir(parent_fd: int, name: str) -> int:
    try:
        os.mkdir(name, DIR_MODE, dir_fd=parent_fd)
    except FileExistsError:
        made = False  # another writer (or node) made it between our open and mkdir
    else:
        made = True
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    if made:
        # mkdir honours the umask; the mode is a security property, so set it outright.
        os.fchmod(fd, DIR_MODE)
        os.fsync(parent_fd)
    return fd


def _is_link(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def temp_name(final: str) -> str:
    """A dot-name for a file on its way to ``final``; readers and listings skip dot-names."""
    return f".{final}.tmp-{secrets.token_hex(6)}"


def create_temp(dir_fd: int, final: str, where: str) -> tuple[int, str]:
    """Create a fresh 0600 temp file beside ``final``; returns (fd, temp name)."""
    name = temp_name(final)
    with os_errors(f"{where}: create {name}"):
        fd = os.open(
            name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            FILE_MODE,
            dir_fd=dir_fd,
        )
        os.fchmod(fd, FILE_MODE)  # the umask must not widen or narrow what a dump is
    return fd, name


def publish(dir_fd: int, temp: str, final: str, where: str) -> None:
    """Rename an fsynced temp file into place and make the rename durable."""
    with os_errors(f"{where}: rename {temp} to {final}"):
        os.rename(temp, final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)


def discard(dir_fd: int, name: str) -> None:
    """Best-effort removal of a temp file after a failure; the failure is what gets reported."""
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=dir_fd)


def _write_temp(dir_fd: int, final: str, data: bytes, where: str) -> str:
    """``data`` in a fresh fsynced temp file beside ``final``; returns its name."""
    fd, temp = create_temp(dir_fd, final, where)
    try:
        with os_errors(f"{where}: write {final}"):
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        discard(dir_fd, temp)
        raise
    os.close(fd)
    return temp


def write_atomic(dir_fd: int, final: str, data: bytes, where: str) -> None:
    temp = _write_temp(dir_fd, final, data, where)
    try:
        publish(dir_fd, temp, final, where)
    except BaseException:
        discard(dir_fd, temp)
        raise


_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})
"""What ``link`` fails with on a filesystem that has no hard links (SMB shares, some FUSE ones)."""


def write_once(dir_fd: int, final: str, data: bytes, where: str) -> bool:
    """``write_atomic`` that never replaces ``final``: False (and nothing written) when it exists.

    For what is written once by whichever writer comes first, such as a completion marker that
    two agents race for: the fsynced temp file is hard-linked to ``final`` (``link`` fails if the
    name exists, atomically, also on NFS), where a rename would silently replace the other writer's.
    On a filesystem without hard links it falls back to a look, then a rename: two writers in the
    very same instant can then both publish, each a complete file.
    """
    temp = _write_temp(dir_fd, final, data, where)
    try:
        with os_errors(f"{where}: publish {final}"):
            try:
                os.link(temp, final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            except FileExistsError:
                return False
            except OSError as err:
                if err.errno not in _NO_HARD_LINKS:
                    raise
                try:
                    os.stat(final, dir_fd=dir_fd, follow_symlinks=False)
                except FileNotFoundError:
                    os.rename(temp, final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                else:
                    return False
    finally:
        discard(dir_fd, temp)  # linked, renamed away or not wanted: the name goes either way
    with os_errors(f"{where}: publish {final}"):
        os.fsync(dir_fd)
    return True


_KINDS = {stat.S_IFREG: "a regular file", stat.S_IFDIR: "a directory", stat.S_IFLNK: "a symlink",
          stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device"}


def open_file(dir_fd: int | None, name: str | os.PathLike[str], flags: int, where: str, *,
              refuse: Callable[[str], Exception] = UnsafeNameError) -> int:
    """Open a regular file (``flags``: access mode and O_CREAT/O_TRUNC), refusing anything else, never blocking.

    What a store, ledger, lock, probe or kubelet-directory path names is anyone's: a FIFO planted
    there blocks an open for reading until a writer comes (forever, and past the agent's SIGTERM
    promise, since a thread stuck in open cannot be cancelled), a device opens the device. So the
    name is refused by ``lstat`` before it is opened, and opened with O_NONBLOCK (a FIFO then returns
    at once, or fails with ENXIO for writing, as a socket does) and O_NOFOLLOW, and the open file is
    checked again (another writer may have swapped it in between). O_NONBLOCK is cleared once it is
    known to be a regular file. ``refuse(message)`` is raised for anything else; OSError propagates.
    """
    shown = f"{where}: {os.fspath(name)}"
    try:
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        if not flags & os.O_CREAT:
            raise
    else:
        if not stat.S_ISREG(mode):
            raise refuse(f"{shown} is {kind_of(mode)}, refused")
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, FILE_MODE,
                     dir_fd=dir_fd)
    except OSError as err:
        if err.errno == errno.ENXIO:  # a FIFO without a reader, or a socket, swapped in since the lstat
            raise refuse(f"{shown} is a FIFO or a socket, refused") from None
        if err.errno == errno.ELOOP:
            raise refuse(f"{shown} is a symlink, refused") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise refuse(f"{shown} is {kind_of(mode)}, refused")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def kind_of(mode: int) -> str:
    """What a file of this ``st_mode`` is, in words: "a FIFO", "a regular file"..."""
    return _KINDS.get(stat.S_IFMT(mode), "an unknown kind of file")


def is_below(dir_fd: int, root_fd: int) -> bool:
    """Is the directory ``dir_fd`` the directory ``root_fd`` or below it, by whatever path it was reached?

    Compared by (device, inode) walking ``..`` up to ``/``, so no symlink, bind mount or ``..`` in
    a path name can hide that it leads into the store.
    """
    root = os.fstat(root_fd)
    fd = os.dup(dir_fd)
    try:
        while True:
            here = os.fstat(fd)
            if (here.st_dev, here.st_ino) == (root.st_dev, root.st_ino):
                return True
            parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
            above = os.fstat(parent)
            os.close(fd)
            fd = parent
            if (above.st_dev, above.st_ino) == (here.st_dev, here.st_ino):
                return False  # "/" is its own parent
    finally:
        os.close(fd)


def open_regular(dir_fd: int, name: str, where: str) -> int:
    """Open an existing regular file for reading, refusing symlinks and special files."""
    with os_errors(f"{where}: {name}"):
        try:
            return open_file(dir_fd, name, os.O_RDONLY, where)
        except FileNotFoundError:
            raise UnknownCheckpoint(f"{where}: {name} does not exist") from None


def read_small(dir_fd: int, name: str, cap: int, where: str) -> bytes:
    """Read a small file whole, refusing one larger than ``cap`` bytes."""
    fd = open_regular(dir_fd, name, where)
    try:
        with os_errors(f"{where}: read {name}"):
            data = os.read(fd, cap + 1)
            chunks = [data]
            while data and sum(map(len, chunks)) <= cap:
                data = os.read(fd, cap + 1)
                chunks.append(data)
    finally:
        os.close(fd)
    blob = b"".join(chunks)
    if len(blob) > cap:
        raise StoreError(f"{where}: {name} is larger than {cap} bytes, refused")
    return blob


def is_regular(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


def list_dirs(dir_fd: int) -> list[str]:
    """Visible subdirectories of an open directory, sorted, symlinks included.

    Symlinks are listed so callers refuse them loudly (``open_dir`` will) instead of
    passing over them in silence: a link in the store is something an operator must hear of.
    """
    names = []
    for name in os.listdir(dir_fd):
        if name.startswith("."):
            continue
        try:
            mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
        except FileNotFoundError:
            continue  # removed while we listed (the collector runs beside us)
        if stat.S_ISDIR(mode) or stat.S_ISLNK(mode):
            names.append(name)
    return sorted(names)
