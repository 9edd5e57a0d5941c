"""The user's kubeconfig, as kubectl reads it: ``--kubeconfig`` or ``$KUBECONFIG`` (paths joined by ``:``,
merged) or ``~/.kube/config``; ``--context`` or its current context; and that context's namespace, the
default for ``-n``. Every request then goes out with the user's own credentials, so RBAC decides what
``kubectl lpm`` may do exactly as it decides for kubectl."""

from __future__ import annotations

from dataclasses import dataclass

from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.config.config_exception import ConfigException

from watcher.errors import LpmError
from watcher.kube.client import Kube


@dataclass(frozen=True)
class Session:
    kube: Kube
    namespace: str
    """The context's namespace, else ``default``."""


async def connect(kubeconfig: str | None, context: str | None) -> Session:
    configuration = Configuration()
    try:
        loader = await kube_config.load_kube_config(config_file=kubeconfig, context=context,
                                                    client_configuration=configuration, persist_config=False)
    except (ConfigException, OSError, KeyError, TypeError, ValueError) as err:
        # kubernetes-asyncio reports a missing or malformed file or context with any of these.
        raise LpmError(f"cannot use the kubeconfig {kubeconfig or '(default)'}: {err}") from err
    current = loader.current_context or {}
    namespace = (current.get("context") or {}).get("namespace") or "default"
    return Session(Kube(ApiClient(configuration)), namespace)
