"""A local cluster on real parts, for lpm's tests and its live demo.

The real kube-apiserver + etcd with a throw-away PKI (controlplane, pki, kubeconfig, apiclient), lpm's
CRDs and RBAC from deploy/ (manifests); real nodes — kubelet, containerd, runc and CRIU in namespaces of
their own on a lab bridge, with kube-controller-manager and kube-scheduler (cluster, node, network,
images, crio for nodes on CRI-O); lpm built from its Dockerfile and deployed from deploy/ (lpmimage,
kustomize, apply, deployed, deploy/); the lpm agent as a child process (agent), and the live migration
the tests and the demo share (live). Kept for what real parts cannot be made to do on demand: a kubelet
stand-in for faults (kubelet) and kubelet-style archives (archives). The trixie rootfs's podman and
buildah (sandbox) build and run lpm's image.

Not part of lpm's wheel or image: scripts/setup installs it editable into the dev venv. It works
from a checkout only (it runs scripts/ and uses .cache/), and most of it needs root.
"""
