"""Server-side apply of rendered objects of any kind, as ``kubectl apply --server-side`` does.

lab/manifests.py applies only the few kinds of the CRDs and RBAC, from a static table on
purpose. What kustomize renders is open-ended (DaemonSets, StorageClasses, the Prometheus Operator's
kinds), so here each kind's resource comes from the apiserver's own discovery, as kubectl finds it.
"""

from __future__ import annotations

from typing import Any

from lab.apiclient import ApiClient

FIELD_MANAGER = "lpm-lab"
# Namespaces before what lives in them; CRDs before objects of their kinds.
_ORDER = {"Namespace": 0, "CustomResourceDefinition": 1}


def in_apply_order(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(objects, key=lambda o: _ORDER.get(o["kind"], len(_ORDER)))


class Applier:
    def __init__(self, client: ApiClient) -> None:
        self._client = client
        self._kinds: dict[str, dict[str, tuple[str, bool]]] = {}  # apiVersion -> kind -> (plural, namespaced)

    def apply_all(self, objects: list[dict[str, Any]]) -> None:
        for obj in in_apply_order(objects):
            self.apply(obj, dry_run=False)

    def _resource(self, api_version: str, kind: str) -> tuple[str, bool]:
        if api_version not in self._kinds:
            listing = self._client.request("GET", "/api/v1" if api_version == "v1" else f"/apis/{api_version}")
            self._kinds[api_version] = {r["kind"]: (r["name"], r["namespaced"])
                                        for r in listing["resources"] if "/" not in r["name"]}
        try:
            return self._kinds[api_version][kind]
        except KeyError:
            raise AssertionError(f"the apiserver serves no {kind} in {api_version}") from None

    def path(self, obj: dict[str, Any]) -> str:
        api_version, kind, meta = obj["apiVersion"], obj["kind"], obj["metadata"]
        plural, namespaced = self._resource(api_version, kind)
        prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        if namespaced:
            assert "namespace" in meta, f"{kind} {meta['name']} has no namespace"
            prefix += f"/namespaces/{meta['namespace']}"
        return f"{prefix}/{plural}/{meta['name']}"

    def apply(self, obj: dict[str, Any], *, dry_run: bool) -> dict[str, Any]:
        """The object as the apiserver stores it (or would, with ``dry_run``): defaulted and validated.

        fieldValidation=Strict: an unknown or duplicated field is an error, not a silently dropped typo.
        """
        query = f"fieldManager={FIELD_MANAGER}&force=true&fieldValidation=Strict"
        if dry_run:
            query += "&dryRun=All"
        return self._client.request("PATCH", f"{self.path(obj)}?{query}", obj,
                                    content_type="application/apply-patch+yaml")
