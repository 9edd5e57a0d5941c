"""A local two-node cluster on real parts, for lpm's tests and its live demo.

The real kube-apiserver + etcd with a throw-away PKI (controlplane, pki, kubeconfig, apiclient),
lpm's CRDs and RBAC from deploy/ (manifests), a kubelet stand-in per node serving the checkpoint
API over verified TLS (kubelet), podman + CRIU in a private mount namespace of the trixie rootfs
(sandbox, runtime), kubelet-style archives (archives), the lpm agent as a child process (agent),
and the live-migration scenario the test and the demo share (live).

Not part of lpm's wheel or image: scripts/setup installs it editable into the dev venv. It works
from a checkout only (it runs scripts/ and uses .cache/), and most of it needs root.
"""
