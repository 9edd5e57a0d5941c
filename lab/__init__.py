"""A local cluster on real parts, for lpm's tests and its live demo.

The real kube-apiserver + etcd with a throw-away PKI (controlplane, pki, kubeconfig, apiclient), lpm's
CRDs and RBAC from deploy/ (manifests); real nodes — kubelet, containerd, runc and CRIU in namespaces of
their own on a lab bridge, with kube-controller-manager and kube-scheduler (cluster, node, network,
images); the lpm agent as a child process (agent), and the live migration the tests and the demo share
(live). Kept for what real parts cannot be made to do on demand: a kubelet stand-in for faults
(kubelet), kubelet-style archives (archives), and podman + CRIU in the trixie rootfs (sandbox, runtime,
podman_live) for the containers-storage restore until CRI-O runs here.

Not part of lpm's wheel or image: scripts/setup installs it editable into the dev venv. It works
from a checkout only (it runs scripts/ and uses .cache/), and most of it needs root.
"""
