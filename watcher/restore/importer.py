"""Importing a checkpoint image into where the node's runtime restores from, behind one of two interfaces.

Three ways, one per kind of node:

- ``ContainersStorageImporter``: CRI-O and podman read containers-storage; ``skopeo copy`` writes it from
  an OCI layout (``LayoutImporter``: the normalised, uncompressed layer written to scratch first).
- ``ContainerdImporter``: containerd >= 2.1 restores from an image in its CRI namespace (``k8s.io``);
  ``ctr images import`` reads an OCI archive from a pipe (``ArchiveImporter``), whose layer is the stored
  dump as it is (stream.py): nothing is written on the node but what containerd keeps.
- ``RegistryImporter``: the node pulls the image like any other; nothing on the node is touched, so the
  agent needs no access to the runtime at all, only push credentials. TLS is always verified (a CA
  directory may be given); the reference returned is pinned by digest, so what is restored is exactly
  what was verified and pushed, whatever happens to the tag.

The agent may run the tools in the host's mount namespace or a tools container, hence a configurable
command prefix (for example ``nsenter -t 1 -m --``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from watcher.errors import LpmError

# A registry host[:port] with an optional path prefix; no scheme, no credentials, no tag: skopeo's
# docker:// transport wants exactly this, and anything else is an operator's typo worth naming.
_REGISTRY = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[a-z0-9]+([._-][a-z0-9]+)*)*$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
# What the tool said, kept short: a registry or daemon error is one line, a Go panic is not worth 10 kB.
_STDERR_TAIL = 500
_PIPE_SIZE = 1 << 20  # Linux's default pipe-max-size


class ImportFailed(LpmError):
    """The runtime's image store (or the registry) refused the checkpoint image."""


class LayoutImporter(Protocol):
    async def import_image(self, layout: Path, tag: str, repository: str) -> str:
        """Import the OCI layout; return the image reference a pod spec uses to restore it."""


@runtime_checkable
class ArchiveImporter(Protocol):
    async def import_archive(self, feed: Callable[[BinaryIO], None], tag: str, repository: str) -> str:
        """Import the OCI archive ``feed`` writes, from a thread, as it writes it (stream.py); return the image
        reference a pod spec uses to restore it. An exception from ``feed`` is raised here, whatever the tool
        then said about the archive it cut short."""


Importer = LayoutImporter | ArchiveImporter


async def _run(prefix: Sequence[str], argv: Sequence[str], what: str, timeout: float,
               feed: Callable[[BinaryIO], None] | None = None) -> None:
    """Run one import tool under ``prefix``; its failure, or its hanging past ``timeout``, is an
    ImportFailed naming ``what`` and the tool. ``feed`` writes the tool's stdin, from a thread; an
    exception it raises (other than the tool closing the pipe) is raised instead: it says why."""
    tool = os.path.basename(argv[0])
    read_end, write_end = os.pipe() if feed else (None, None)
    if write_end is not None:
        _widen(write_end)
    try:
        process = await asyncio.create_subprocess_exec(
            *prefix, *argv, stdin=read_end if read_end is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    except FileNotFoundError:
        if write_end is not None:
            os.close(write_end)
        raise ImportFailed(f"import of {what}: {(prefix or argv)[0]} is not installed") from None
    finally:
        if read_end is not None:
            os.close(read_end)
    feeding = asyncio.create_task(asyncio.to_thread(_feed, feed, write_end)) if feed and write_end else None
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise ImportFailed(f"import of {what}: {tool} took longer than {timeout:.0f} s") from None
    finally:
        if feeding is not None:
            try:
                await feeding
            except OSError:
                pass  # the tool stopped reading (it failed or was killed): its own error says why
    if process.returncode != 0:
        said = stderr.decode(errors="replace").strip()[-_STDERR_TAIL:]
        raise ImportFailed(f"import of {what}: {tool} failed: {said}")


def _widen(pipe: int) -> None:
    """Give the pipe to the tool 1 MiB instead of Linux's 64 KiB. ctr passes what each read returns to
    containerd as one gRPC write and waits for its answer, so a narrow pipe costs a round trip per 64 KiB:
    a 2 GiB checkpoint's import took 10.37 s instead of 8.58 s (medians of 5, bench/stream.py; faster in
    every round). Best effort: a kernel whose pipe-max-size is lower refuses, and the import works as before."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(pipe, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)


def _feed(feed: Callable[[BinaryIO], None], fd: int) -> None:
    with os.fdopen(fd, "wb") as stream:
        feed(stream)


@dataclass(frozen=True)
class ContainersStorageImporter:
    prefix: Sequence[str] = ()
    """Command prefix that reaches the node's containers-storage (empty: run skopeo directly)."""
    timeout: float = 300.0

    async def import_image(self, layout: Path, tag: str, repository: str) -> str:
        reference = f"localhost/{repository}:{tag}"
        await _run(self.prefix, ["skopeo", "copy", "--quiet", f"oci:{layout}:{tag}",
                    f"containers-storage:{reference}"], reference, self.timeout)
        return reference


@dataclass(frozen=True)
class ContainerdImporter:
    address: str = "/run/containerd/containerd.sock"
    namespace: str = "k8s.io"
    """The CRI plugin's namespace: an image anywhere else is invisible to the kubelet."""
    prefix: Sequence[str] = ()
    ctr: str = "ctr"
    """containerd's client: its version must speak to the daemon's API (the node's own is best)."""
    timeout: float = 300.0

    async def import_archive(self, feed: Callable[[BinaryIO], None], tag: str, repository: str) -> str:
        # ctr names the image <base-name>:<the index's ref.name>, which is the tag the archive was written with.
        base = f"localhost/{repository}"
        reference = f"{base}:{tag}"
        # From a pipe, never written out on the node. Unpacked, as ctr does by default: containerd's restore
        # copies the checkpoint out of the image's snapshot, and without one it fails ("parent snapshot ...
        # does not exist"), bench/freeze.py found.
        await _run(self.prefix, [self.ctr, "--address", self.address, "--namespace", self.namespace,
                    "images", "import", "--local", "--base-name", base, "-"], reference, self.timeout,
                   feed=feed)
        return reference


@dataclass(frozen=True)
class RegistryImporter:
    registry: str
    """``host[:port][/path]`` that every node can pull from."""
    cert_dir: Path | None = None
    """A directory of ``*.crt`` CAs for the registry (skopeo's certs.d convention); None: the system's."""
    auth_file: Path | None = None
    """Push credentials (containers-auth.json); only its path is ever logged."""
    prefix: Sequence[str] = ()
    timeout: float = 300.0

    def __post_init__(self) -> None:
        if not _REGISTRY.fullmatch(self.registry):
            raise ValueError(f"registry {self.registry!r}: expected host[:port][/path], "
                             "without a scheme, credentials or tag")

    async def import_image(self, layout: Path, tag: str, repository: str) -> str:
        target = f"{self.registry}/{repository}"
        with tempfile.TemporaryDirectory(prefix="lpm-push-", dir=layout.parent) as scratch:
            digest_file = Path(scratch) / "digest"
            argv = ["skopeo", "copy", "--quiet",
                    # Without it skopeo compresses the uncompressed layer on the way and the manifest, its
                    # digest and the verified bytes' identity change in transit.
                    "--preserve-digests", "--digestfile", str(digest_file)]
            if self.cert_dir is not None:
                argv += ["--dest-cert-dir", str(self.cert_dir)]
            if self.auth_file is not None:
                argv += ["--dest-authfile", str(self.auth_file)]
            await _run(self.prefix, [*argv, f"oci:{layout}:{tag}", f"docker://{target}:{tag}"], f"{target}:{tag}",
                       self.timeout)
            digest = digest_file.read_text().strip()
        if not _DIGEST.fullmatch(digest):
            raise ImportFailed(f"import of {target}:{tag}: skopeo reported no usable digest ({digest[:80]!r})")
        return f"{target}@{digest}"
