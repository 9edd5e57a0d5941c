"""Whether a pod may migrate at all, decided before anything is checkpointed (pure; table-tested).

A migration hands the pod's running state to a new pod on another node and then removes the source. That
is sound only when nothing else owns the pod's identity or keeps state the checkpoint does not carry:

- Bare pods and a ReplicaSet's (a Deployment's) pods migrate: the restored pod is handed to the ReplicaSet
  (``watcher.cluster.handover``), so the set never holds a fresh, empty replica nor one too many.
- A StatefulSet's pod is refused: its identity is its name (and hostname, stable network ID and claims),
  which the restored pod could only take once the source is gone — the moment the StatefulSet controller
  creates a fresh pod under that name. Both would race for it; the controller usually wins.
- A Job's pod is refused: the Job controller counts a pod deleted while running as failed (toward
  ``backoffLimit``), and the restored pod would need to be adopted mid-run.
- A DaemonSet's pod, a static pod's mirror (or any pod owned by a Node) belong to their node.
- Any other controller is refused: lpm cannot hand a pod over to a controller it does not know.
- Volumes whose state stays on the source node (``emptyDir``, ``hostPath``, generic ephemeral volumes,
  ReadWriteOnce or ReadWriteOncePod claims, and volume types lpm does not know) are refused: the
  checkpoint carries the processes and the container's root-filesystem changes, not those.
  ReadWriteMany and ReadOnlyMany claims migrate: the restored pod mounts the same claim.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MIRROR_ANNOTATION = "kubernetes.io/config.mirror"

_REFUSED_OWNERS = {
    ("apps", "StatefulSet"): "a StatefulSet's pod keeps its name, hostname and claims; the restored pod could take "
                             "the name only once the source is gone, racing the StatefulSet controller, which "
                             "recreates a fresh pod under that name at once",
    ("batch", "Job"): "the Job controller would count the source's removal as a failed pod and could not count "
                      "the restored one toward its completions",
    ("apps", "DaemonSet"): "a DaemonSet's pod belongs to its node (the DaemonSet runs its own pod on every node)",
    ("", "Node"): "a static pod belongs to its node's kubelet",
}
# Volume sources whose data is the same from every node, or made afresh for each pod from the API.
_PORTABLE_VOLUMES = {"configMap", "secret", "projected", "downwardAPI", "nfs", "cephfs", "glusterfs", "image"}
_SHARED_ACCESS = {"ReadWriteMany", "ReadOnlyMany"}


def _group(api_version: str) -> str:
    return api_version.rpartition("/")[0]


def owner_refusal(pod: Mapping[str, Any]) -> str | None:
    """Why a pod's owner rules out migrating it; None for bare pods and a ReplicaSet's."""
    metadata = pod.get("metadata", {})
    if MIRROR_ANNOTATION in (metadata.get("annotations") or {}):
        return "a static pod's mirror cannot migrate: a static pod belongs to its node's kubelet"
    controller = next((ref for ref in metadata.get("ownerReferences") or [] if ref.get("controller")), None)
    if controller is None:
        return None
    group, kind = _group(str(controller.get("apiVersion", ""))), controller.get("kind")
    if (group, kind) == ("apps", "ReplicaSet"):
        return None
    owner = f"{kind} {controller.get('name')}"
    why = _REFUSED_OWNERS.get((group, kind),
                              "lpm hands restored pods over to ReplicaSets only, not to controllers it does not know")
    return f"pods owned by {owner} cannot migrate: {why}"


def claim_names(pod: Mapping[str, Any]) -> list[str]:
    """The PersistentVolumeClaims the pod mounts, to be read for ``volume_refusal``."""
    return [v["persistentVolumeClaim"]["claimName"] for v in pod.get("spec", {}).get("volumes") or []
            if isinstance(v.get("persistentVolumeClaim"), Mapping) and "claimName" in v["persistentVolumeClaim"]]


def volume_refusal(pod: Mapping[str, Any], claims: Mapping[str, Mapping[str, Any] | None]) -> str | None:
    """Why the pod's volumes rule out migrating it; ``claims``: claim name -> the claim (None: not found)."""
    stuck = []
    for volume in pod.get("spec", {}).get("volumes") or []:
        name = volume.get("name")
        source = next((key for key in volume if key != "name"), "no source")
        if source in _PORTABLE_VOLUMES:
            continue
        if source != "persistentVolumeClaim":
            stuck.append(f"{name} ({source}: its data stays on the source node)")
            continue
        claim_name = volume[source].get("claimName")
        claim = claims.get(claim_name)
        if claim is None:
            stuck.append(f"{name} (claim {claim_name} does not exist)")
            continue
        modes = set(claim.get("status", {}).get("accessModes") or claim.get("spec", {}).get("accessModes") or [])
        if not modes & _SHARED_ACCESS:
            stuck.append(f"{name} (claim {claim_name} is {', '.join(sorted(modes)) or 'without access modes'}: "
                         "only the source node may mount it)")
    if not stuck:
        return None
    return ("volumes a checkpoint cannot carry: " + "; ".join(stuck)
            + ". Only ReadWriteMany and ReadOnlyMany claims, and volumes the API fills, migrate")
