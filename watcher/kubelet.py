"""Calling the kubelet's checkpoint API.

    POST https://<node>:10250/checkpoint/<namespace>/<pod>/<container>?timeout=<seconds>
    -> {"items": ["/var/lib/kubelet/checkpoints/checkpoint-....tar"]}

Authorised as ``create`` on ``nodes/checkpoint``. The kubelet's serving certificate is
verified against a configured CA, always (the Go agent this replaces skipped verification).
The bearer token is re-read from its file on every call: projected service-account tokens
rotate. Connection errors and 5xx are retried a bounded number of times; 4xx are final.
The reply's ``items[0]`` is the completion signal: the archive is finished when it returns.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import aiohttp

from watcher.errors import LpmError
from watcher.kube.informer import Backoff

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

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._ssl))
        return self._session

    async def checkpoint(self, endpoint: Endpoint, namespace: str, pod: str, container: str) -> Path:
        """Ask the kubelet for one container's checkpoint; returns the archive's path on the node."""
        url = (f"https://{endpoint.host}:{endpoint.port}/checkpoint/"
               f"{quote(namespace, safe='')}/{quote(pod, safe='')}/{quote(container, safe='')}")
        what = f"kubelet on {endpoint.node}: checkpoint of {namespace}/{pod} container {container}"
        # The kubelet answers once the runtime is done; allow it its own timeout plus as much again
        # (at most 30 s) for the archive write and the reply, then count the call as failed.
        grace = min(30, self._settings.checkpoint_timeout)
        timeout = aiohttp.ClientTimeout(total=self._settings.checkpoint_timeout + grace)
        last = ""
        for attempt in range(1, self._settings.attempts + 1):
            token = self._settings.token_file.read_text().strip()
            try:
                async with self._client().post(url, params={"timeout": str(self._settings.checkpoint_timeout)},
                                               headers={"Authorization": f"Bearer {token}"},
                                               timeout=timeout) as response:
                    body = await response.text()
                    if response.status == 200:
                        return _archive_path(what, body)
                    last = f"HTTP {response.status}: {body.strip()[:300]}"
                    if response.status < 500:
                        raise KubeletError(f"{what} refused: {last}")
            except asyncio.TimeoutError:
                last = f"no answer within {timeout.total:.0f} s"
            except (aiohttp.ClientError, OSError) as err:
                last = f"{type(err).__name__}: {err}"
            if attempt < self._settings.attempts:
                delay = self._settings.backoff.delay(attempt)
                log.warning("kubelet call failed; retrying", extra={"fields": {
                    "node": endpoint.node, "pod": f"{namespace}/{pod}", "container": container,
                    "reason": last, "retryInSeconds": round(delay, 2)}})
                await asyncio.sleep(delay)
        raise KubeletError(f"{what} failed after {self._settings.attempts} attempts: {last}")


def _archive_path(what: str, body: str) -> Path:
    try:
        items = json.loads(body)["items"]
        path = Path(items[0])
    except (ValueError, KeyError, IndexError, TypeError):
        raise KubeletError(f"{what}: unexpected reply {body[:200]!r}") from None
    if not path.is_absolute() or ".." in path.parts:
        raise KubeletError(f"{what}: archive path {str(path)!r} is not a plain absolute path")
    return path
