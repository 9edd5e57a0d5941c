"""Raw-JSON access to the Kubernetes API, with errors mapped once into lpm's tree.

kubernetes-asyncio supplies the configuration (kubeconfig or in-cluster: server, CA, client
certificate or bearer token — TLS is always verified) and the authenticated HTTP call. lpm
asks it for raw responses (``_preload_content=False``) and keeps bodies as plain dicts
(typed with TypedDicts where they are read): the generated models add nothing for custom
resources and would hide the ``resourceVersion`` bookkeeping the watch loop must own.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client import ApiClient, Configuration

from watcher.errors import ApiError, ApiUnavailable, Conflict, Forbidden, Gone, NotFound

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
_BY_STATUS: dict[int, type[ApiError]] = {403: Forbidden, 404: NotFound, 409: Conflict, 410: Gone}
REQUEST_TIMEOUT = 30.0


async def connect(kubeconfig: Path | None) -> ApiClient:
    """An ApiClient from a kubeconfig file, or the pod's in-cluster service account."""
    if kubeconfig is not None:
        return await kube_config.new_client_from_config(config_file=str(kubeconfig), persist_config=False)
    configuration = Configuration()
    kube_config.load_incluster_config(client_configuration=configuration)
    return ApiClient(configuration)


def _error(method: str, path: str, status: int, body: str) -> ApiError:
    try:
        decoded = json.loads(body)
        message = decoded.get("message") or body
        # An eviction's refusal names the disruption budget only in its causes.
        causes: list[Any] = [c.get("message") for c in (decoded.get("details") or {}).get("causes") or []
                  if isinstance(c, dict) and c.get("message")]
        if causes:
            message = f"{message} ({'; '.join(causes)})"
    except (json.JSONDecodeError, AttributeError):
        message = body
    kind = _BY_STATUS.get(status, ApiUnavailable if status >= 500 or status == 429 else ApiError)
    return kind(f"{method} {path}: {status} {str(message)[:300]}", status)


class Kube:
    """One authenticated API server, spoken to in JSON."""

    def __init__(self, client: ApiClient) -> None:
        self.client = client

    async def _send(self, method: str, path: str, query: Mapping[str, Any] | None, body: Any,
                    content_type: str, timeout: float | None) -> aiohttp.ClientResponse:
        headers = {"Accept": JSON}
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            response: aiohttp.ClientResponse = await self.client.call_api(
                path, method, query_params=list((query or {}).items()), header_params=headers, body=body,
                auth_settings=["BearerToken"], _preload_content=False, _request_timeout=timeout)
        except (TimeoutError, aiohttp.ClientError, OSError) as err:
            raise ApiUnavailable(f"{method} {path}: API server unreachable ({err or type(err).__name__})", 0) from err
        return response

    async def request(self, method: str, path: str, query: Mapping[str, Any] | None = None, body: Any = None,
                      content_type: str = JSON, timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
        """``timeout``: seconds for the whole call, a hung API server's answer included."""
        response = await self._send(method, path, query, body, content_type, timeout)
        try:
            text = await response.text()
        except (TimeoutError, aiohttp.ClientError) as err:
            raise ApiUnavailable(f"{method} {path}: reply lost ({err or type(err).__name__})", 0) from err
        finally:
            response.release()
        if not 200 <= response.status < 300:
            raise _error(method, path, response.status, text)
        decoded: dict[str, Any] = json.loads(text) if text else {}
        return decoded

    async def get(self, path: str, query: Mapping[str, Any] | None = None,
                  timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
        return await self.request("GET", path, query, timeout=timeout)

    async def create(self, path: str, body: Mapping[str, Any], timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
        return await self.request("POST", path, body=body, timeout=timeout)

    async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("PATCH", path, body=patch, content_type=MERGE_PATCH)

    async def replace(self, path: str, body: Mapping[str, Any], timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
        return await self.request("PUT", path, body=body, timeout=timeout)

    async def watch(self, path: str, query: Mapping[str, Any], timeout: float) -> AsyncIterator[dict[str, Any]]:
        """One watch stream: decoded events until the server closes it or ``timeout`` passes."""
        response = await self._send("GET", path, {**query, "watch": "true"}, None, JSON, timeout)
        try:
            if not 200 <= response.status < 300:
                raise _error("WATCH", path, response.status, await response.text())
            async for line in response.content:
                if line.strip():
                    yield json.loads(line)
        except (TimeoutError, aiohttp.ClientError) as err:
            raise ApiUnavailable(f"WATCH {path}: stream broke ({err or type(err).__name__})", 0) from err
        finally:
            response.release()
