"""Importing a checkpoint image into the node's runtime, behind one small interface.

containers-storage (CRI-O, podman) is reached with ``skopeo copy``; the agent may need to run it
in the host's mount namespace or a tools container, hence a configurable command prefix (for
example ``nsenter -t 1 -m --``). containerd >= 2.1 restores from a local archive path or a
``ctr`` import and would be a second implementation of the same interface.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

from watcher.errors import LpmError


class ImportFailed(LpmError):
    """The runtime's image store refused the checkpoint image."""


class Importer(Protocol):
    async def import_image(self, layout: Path, tag: str, repository: str) -> str:
        """Import the OCI layout; return the image reference a pod spec uses to restore it."""


@dataclass(frozen=True)
class ContainersStorageImporter:
    prefix: Sequence[str] = ()
    """Command prefix that reaches the node's containers-storage (empty: run skopeo directly)."""
    timeout: float = 300.0

    async def import_image(self, layout: Path, tag: str, repository: str) -> str:
        reference = f"localhost/{repository}:{tag}"
        argv = [*self.prefix, "skopeo", "copy", "--quiet", f"oci:{layout}:{tag}", f"containers-storage:{reference}"]
        process = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                       stdout=asyncio.subprocess.DEVNULL,
                                                       stderr=asyncio.subprocess.PIPE)
        try:
            _, stderr = await asyncio.wait_for(process.communicate(), timeout=self.timeout)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()
            raise ImportFailed(f"import of {reference}: skopeo took longer than {self.timeout:.0f} s") from None
        if process.returncode != 0:
            raise ImportFailed(f"import of {reference}: skopeo failed: {stderr.decode(errors='replace').strip()[-500:]}")
        return reference
