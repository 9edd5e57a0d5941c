"""Calling the kubelet's checkpoint API.

    POST https://<node>:10250/checkpoint/<namespace>/<pod>/<container>?timeout=<seconds>
    -> {"items": ["/var/lib/kubelet/checkpoints/checkpoint-....tar"]}

Authorised as ``create`` on ``nodes/checkpoint``. The kubelet's serving certificate is
verified against a configured CA, always (the Go agent this replaces skipped verification).
The bearer token is re-read from its file on every call: projected service-account tokens
rotate. The reply's ``items[0]`` is the completion signal: the archive is finished when it
returns.

The POST is not idempotent: each one freezes the workload for a CRIU dump and leaves an
archive. So it is re-sent only when it surely never reached the kubelet (no connection
could be made: refused, unreachable, TLS handshake failed, connect timed out) or when the
kubelet answered 5xx and no archive from that request is in its checkpoint directory; 4xx
are final. A request that may have reached the kubelet without an answer coming back — the
reply timed out after the request went out, the connection was reset or closed — is never
sent again: the agent looks in the kubelet's checkpoint directory (this node's) for the
archive that request produced, named for this pod and container and timed no earlier than
the request, waits for it to stop growing, and uses it; if none appears, it fails with the
reason. Every request goes out on a fresh connection (no keep-alive), so a pooled
connection the kubelet closed while idle cannot turn an ordinary call into an uncertain one.

Nor is a request ever cut short by the agent: the kubelet hands the request's own context to the runtime
(``pkg/kubelet/server/server.go``), so a dropped connection cancels the runtime's call, and containerd,
which resumes a paused container with that call's context, leaves the container paused for good. Each
request runs in a task of its own (``in_flight``) that no waiter's cancellation reaches; the agent waits
for those before it stops. Only the reply timeout, which falls after the kubelet's own deadline for the
runtime, ends a request from this side.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import aiohttp

from watcher.archive import names
from watcher.archive.finished import wait_settled
from watcher.backoff import Backoff, grace
from watcher.errors import ArchiveError, LpmError

log = logging.getLogger(__name__)


class KubeletError(LpmError):
    """The kubelet refused, failed, or could not be reached after the allowed retries."""


@dataclass(frozen=True)
class KubeletSettings:
    ca_file: Path
    """CA that signed the kubelets' serving certificates."""
    token_file: Path
    """Bearer token of the agent's service account (re-read every call)."""
    port: int = 10250
    checkpoint_timeout: int = 120
    """Seconds the kubelet may take to checkpoint one container (its ``?timeout=``)."""
    attempts: int = 4
    backoff: Backoff = Backoff(0.5, 8.0)
    checkpoint_dir: Path = Path("/var/lib/kubelet/checkpoints")
    """This node's kubelet checkpoint directory, where an unanswered request's archive is looked for."""
    settle: float = 2.0
    """Seconds such an archive must hold still (and end in two zero blocks) before it is taken."""
    connect_timeout: float = 10.0
    """Seconds to connect (TCP and TLS); a request that could not connect was never sent."""


@dataclass(frozen=True)
class Endpoint:
    node: str
    host: str
    port: int


class KubeletClient:
    def __init__(self, settings: KubeletSettings) -> None:
        self._settings = settings
        self._ssl = ssl.create_default_context(cafile=str(settings.ca_file))
        self._session: aiohttp.ClientSession | None = None
        self.in_flight: set[asyncio.Task[tuple[int, str]]] = set()
        """Requests still out, their waiters gone or not: each runs until the kubelet answers or times out."""

    async def close(self) -> None:
        """Close the connection pool; call it once ``in_flight`` is empty (a request would lose its connection)."""
        if self._session is not None:
            await self._session.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._ssl, force_close=True))
        return self._session

    async def checkpoint(self, endpoint: Endpoint, namespace: str, pod: str, container: str) -> Path:
        """Ask the kubelet for one container's checkpoint; returns the archive's path on the node."""
        url = (f"https://{endpoint.host}:{endpoint.port}/checkpoint/"
               f"{quote(namespace, safe='')}/{quote(pod, safe='')}/{quote(container, safe='')}")
        what = f"kubelet on {endpoint.node}: checkpoint of {namespace}/{pod} container {container}"
        # The kubelet answers once the runtime is done; allow it its own timeout and the grace.
        spare = grace(self._settings.checkpoint_timeout)
        timeout = aiohttp.ClientTimeout(total=self._settings.checkpoint_timeout + spare,
                                        sock_connect=self._settings.connect_timeout)
        last = ""
        for attempt in range(1, self._settings.attempts + 1):
            token = self._settings.token_file.read_text().strip()
            sent_at = time.time()
            request = asyncio.create_task(self._post(url, token, timeout), name=f"checkpoint {namespace}/{pod}")
            self.in_flight.add(request)
            request.add_done_callback(self._ended)
            try:
                status, body = await asyncio.shield(request)
                if status == 200:
                    return _archive_path(what, body)
                last = f"HTTP {status}: {body.strip()[:300]}"
                if status < 500:
                    raise KubeletError(f"{what} refused: {last}")
                # The kubelet answered that it failed. If the runtime left an archive all the same (the
                # kubelet's own deadline passed while CRIU was still writing), that is this request's.
                if self._produced(namespace, pod, container, sent_at):
                    return await self._look_for_archive(what, namespace, pod, container, sent_at, last, spare)
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as err:
                last = f"cannot connect: {type(err).__name__}: {err}"  # never sent: safe to send again
            except TimeoutError:
                reason = f"no answer within {timeout.total:.0f} s"
                return await self._look_for_archive(what, namespace, pod, container, sent_at, reason, spare)
            except (aiohttp.ClientError, OSError) as err:
                reason = f"{type(err).__name__}: {err}"
                return await self._look_for_archive(what, namespace, pod, container, sent_at, reason, spare)
            if attempt < self._settings.attempts:
                delay = self._settings.backoff.delay(attempt)
                log.warning("kubelet call failed; retrying", extra={"fields": {
                    "node": endpoint.node, "pod": f"{namespace}/{pod}", "container": container,
                    "reason": last, "retryInSeconds": round(delay, 2)}})
                await asyncio.sleep(delay)
        raise KubeletError(f"{what} failed after {self._settings.attempts} attempts: {last}")

    def _ended(self, request: asyncio.Task[tuple[int, str]]) -> None:
        self.in_flight.discard(request)
        if not request.cancelled():
            request.exception()  # a waiter that left no longer takes it; its failure is not news at shutdown

    async def _post(self, url: str, token: str, timeout: aiohttp.ClientTimeout) -> tuple[int, str]:
        async with self._client().post(url, params={"timeout": str(self._settings.checkpoint_timeout)},
                                       headers={"Authorization": f"Bearer {token}"},
                                       timeout=timeout) as response:
            return response.status, await response.text()

    def _produced(self, namespace: str, pod: str, container: str, sent_at: float) -> Path | None:
        """The newest archive in the checkpoint directory for this container, timed no earlier than ``sent_at``.

        The kubelet names an archive with the time it took the checkpoint, to the second, on this
        node's clock (the agent runs on the same node): one from before the request is not its.
        """
        directory = self._settings.checkpoint_dir
        floor = datetime.fromtimestamp(int(sent_at), UTC)
        found: list[tuple[datetime, str]] = []
        try:
            listing = os.listdir(directory)
        except OSError as err:
            log.warning("cannot list the kubelet checkpoint directory", extra={"fields": {
                "directory": str(directory), "reason": err.strerror}})
            return None
        for name in listing:
            if not names.is_candidate(name):
                continue
            try:
                archive = names.parse(name)
            except ArchiveError:
                continue
            if archive.pod_name == pod and archive.matches(namespace, container) and archive.taken_at >= floor:
                found.append((archive.taken_at, name))
        return directory / max(found)[1] if found else None

    async def _look_for_archive(self, what: str, namespace: str, pod: str, container: str, sent_at: float,
                                reason: str, grace: float) -> Path:
        """Wait for the archive an unanswered request produced; never send the request again."""
        settings = self._settings
        # The kubelet gives the runtime ``checkpoint_timeout`` from the request; allow the write after it.
        deadline = max(sent_at + settings.checkpoint_timeout + grace, time.time()) + grace
        log.warning("kubelet call may have reached the kubelet; not re-sending it, looking for its archive",
                    extra={"fields": {"pod": f"{namespace}/{pod}", "container": container, "reason": reason,
                                      "directory": str(settings.checkpoint_dir),
                                      "waitSeconds": round(deadline - time.time(), 1)}})
        path = await wait_settled(lambda: self._produced(namespace, pod, container, sent_at), settings.settle,
                                  deadline - time.time())
        if path is not None:
            log.info("found the archive of the unanswered kubelet call", extra={"fields": {
                "pod": f"{namespace}/{pod}", "container": container, "archive": str(path)}})
            return path
        raise KubeletError(
            f"{what}: {reason}; the request may have reached the kubelet, so it is not sent again (a second "
            f"checkpoint would freeze the container again and leave an orphan archive), and no finished archive "
            f"from it appeared in {settings.checkpoint_dir} within {deadline - sent_at:.0f} s of sending it")


def _archive_path(what: str, body: str) -> Path:
    try:
        items = json.loads(body)["items"]
        path = Path(items[0])
    except (ValueError, KeyError, IndexError, TypeError):
        raise KubeletError(f"{what}: unexpected reply {body[:200]!r}") from None
    if not path.is_absolute() or ".." in path.parts:
        raise KubeletError(f"{what}: archive path {str(path)!r} is not a plain absolute path")
    return path
