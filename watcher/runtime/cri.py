"""Asking the node's runtime about itself over its CRI socket: ``Version`` and verbose ``Status``.

gRPC over a unix socket with grpcio, the messages passed as raw bytes (``watcher.runtime.protowire``
encodes and decodes the few fields used). Both calls are read-only and answered by containerd's and
CRI-O's CRI servers alike. Errors become ``RuntimeUnreachable`` here, once.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from watcher.errors import LpmError
from watcher.runtime import protowire

_SERVICE = "/runtime.v1.RuntimeService"
TIMEOUT = 5.0  # seconds per call: both are answered from memory by a healthy runtime
# VersionRequest{version: the CRI API version the caller speaks}; the runtime ignores it beyond logging.
_VERSION_REQUEST = protowire.encode_string(1, "v1")
_STATUS_REQUEST = protowire.encode_bool(1, True)  # StatusRequest{verbose: true}
# VersionResponse: 1 version (the CRI API's), 2 runtime_name, 3 runtime_version, 4 runtime_api_version.
_RUNTIME_NAME, _RUNTIME_VERSION = 2, 3
_STATUS_INFO = 2  # StatusResponse: 1 status, 2 info (map<string, string>), 3 runtime_handlers, 4 features


class RuntimeUnreachable(LpmError):
    """The runtime's CRI socket did not answer, or answered something that is not CRI."""


@dataclass(frozen=True)
class RuntimeReport:
    name: str
    version: str
    info: dict[str, str]
    """The verbose Status's info map (containerd and CRI-O put their effective config under "config")."""


def target(endpoint: str) -> str:
    """A gRPC target for ``endpoint``: ``unix:///path`` as given, a bare absolute path made one."""
    if endpoint.startswith("unix://"):
        return endpoint
    if endpoint.startswith("/"):
        return f"unix://{endpoint}"
    raise LpmError(f"runtime endpoint {endpoint!r}: expected unix:///path/to/socket")


async def query(endpoint: str, timeout: float = TIMEOUT) -> RuntimeReport:
    """The runtime's name, version and verbose status info, asked over its CRI socket."""
    async with grpc.aio.insecure_channel(target(endpoint)) as channel:  # a local unix socket: no TLS to have
        try:
            version = await channel.unary_unary(f"{_SERVICE}/Version")(_VERSION_REQUEST, timeout=timeout)
            status = await channel.unary_unary(f"{_SERVICE}/Status")(_STATUS_REQUEST, timeout=timeout)
        except grpc.aio.AioRpcError as err:
            raise RuntimeUnreachable(f"CRI at {endpoint}: {err.code().name}: {err.details()}") from None
    try:
        names = protowire.strings(version)
        info = protowire.string_map(status, _STATUS_INFO)
    except protowire.WireError as err:
        raise RuntimeUnreachable(f"CRI at {endpoint}: answer is not a CRI message: {err}") from None
    return RuntimeReport(names.get(_RUNTIME_NAME, ""), names.get(_RUNTIME_VERSION, ""), info)
