"""A minimal synchronous JSON client for the local control plane's own housekeeping.

The control plane starts and is provisioned from a synchronous pytest session fixture (and from a plain
script for the demo), where no event loop runs; the stdlib is enough for the handful of calls it makes.
lpm's code and the tests themselves use kubernetes-asyncio instead.
"""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


class ApiError(Exception):
    """A non-2xx answer from the apiserver, with the Status body it sent."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


class ApiClient:
    """Speaks to one apiserver as one client-certificate identity, TLS verified against ``ca_file``."""

    def __init__(self, server: str, ca_file: Path, cert_file: Path, key_file: Path, timeout: float = 10.0) -> None:
        url = urlsplit(server)
        if url.scheme != "https" or url.hostname is None or url.port is None:
            raise ValueError(f"expected https://HOST:PORT, got {server!r}")
        self._host = url.hostname
        self._port = url.port
        self._timeout = timeout
        self._ssl = ssl.create_default_context(cafile=str(ca_file))
        self._ssl.load_cert_chain(str(cert_file), str(key_file))

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """Send one request; return the decoded JSON answer or raise ``ApiError``.

        Connection errors (``OSError``) propagate as they are: callers that poll for readiness expect them.
        """
        conn = http.client.HTTPSConnection(self._host, self._port, context=self._ssl, timeout=self._timeout)
        try:
            headers = {"Accept": "application/json"}
            payload = None
            if body is not None:
                payload = json.dumps(body).encode()
                headers["Content-Type"] = content_type
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            text = response.read().decode(errors="replace")
        finally:
            conn.close()
        if not 200 <= response.status < 300:
            raise ApiError(method, path, response.status, text)
        if not text or response.getheader("Content-Type", "").split(";")[0] != "application/json":
            return {"raw": text}
        decoded: dict[str, Any] = json.loads(text)
        return decoded

    def watch(self, path: str, resource_version: str, timeout: float) -> Iterator[dict[str, Any]]:
        """The events of one watch from ``resource_version``, until the server ends it after ``timeout`` s."""
        conn = http.client.HTTPSConnection(self._host, self._port, context=self._ssl, timeout=timeout + 10)
        try:
            query = f"watch=true&resourceVersion={resource_version}&timeoutSeconds={int(timeout)}"
            conn.request("GET", f"{path}{'&' if '?' in path else '?'}{query}", headers={"Accept": "application/json"})
            response = conn.getresponse()
            if response.status != 200:
                raise ApiError("WATCH", path, response.status, response.read().decode(errors="replace"))
            for line in response:
                if line.strip():
                    yield json.loads(line)
        finally:
            conn.close()
