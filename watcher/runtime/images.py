"""The node's runtime pulls an image ahead of need, over its CRI socket.

    runtime.v1.ImageService/ImageStatus{image: ImageSpec{image}} -> {image: Image | absent}
    runtime.v1.ImageService/PullImage{image: ImageSpec{image}} -> {image_ref}

A restored container runs on its original base image. containerd's restore looks that image up by the
reference the checkpoint recorded (``NAME@sha256:DIGEST``) and pulls it when the node lacks it, inside the
freeze window; the destination's agent asks for the same pull as soon as a migration to its node starts,
while the source is still checkpointing. It pulls as containerd's restore would: no credentials of the
pod's (the agent reads no Secrets), only what the runtime's own registry configuration gives.
"""

from __future__ import annotations

import grpc

from watcher.errors import LpmError
from watcher.runtime import protowire
from watcher.runtime.cri import target

_SERVICE = "/runtime.v1.ImageService"
STATUS_TIMEOUT = 5.0


class PullFailed(LpmError):
    """The runtime could not be asked, or could not pull the image."""


def _spec(reference: str) -> bytes:
    return protowire.encode_message(1, protowire.encode_string(1, reference))  # {image: ImageSpec{image}}


async def pull_if_absent(endpoint: str, reference: str, timeout: float) -> bool:
    """Have the runtime at ``endpoint`` hold ``reference``: True when it pulled it now, False when it held it
    already. PullFailed says why it could not (unreachable, refused, no such image, ``timeout`` passed)."""
    async with grpc.aio.insecure_channel(target(endpoint)) as channel:  # a local unix socket: no TLS to have
        try:
            status = await channel.unary_unary(f"{_SERVICE}/ImageStatus")(_spec(reference), timeout=STATUS_TIMEOUT)
            if any(number == 1 and value for number, _, value in protowire.fields(status)):
                return False
            await channel.unary_unary(f"{_SERVICE}/PullImage")(_spec(reference), timeout=timeout)
        except grpc.aio.AioRpcError as err:
            raise PullFailed(f"image {reference} on the runtime at {endpoint}: {err.code().name}: "
                             f"{err.details()}") from None
        except protowire.WireError as err:
            raise PullFailed(f"image {reference}: the runtime at {endpoint} answered something that is not "
                             f"CRI: {err}") from None
    return True
