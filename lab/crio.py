"""What a lab node needs to run CRI-O instead of containerd (lab/node.py), each setting with its why.

The recipe of docs/crio-node.md, which found each of these the hard way: CRI-O v1.36.3 (the newest release
the module proxy serves; scripts/node/build-crio.sh), conmon from the trixie rootfs, runc 1.4 behind a
wrapper, CRIU 4.1, images in containers-storage under the node's own directory.
"""

from __future__ import annotations

import json
from pathlib import Path

SOCKET = "/run/crio/crio.sock"
RUNC = "/opt/lpm/runc/runc"

# Local images only, and nothing signed: the lab's images are built here (lab/images.py, lab/lpmimage.py)
# and lpm's checkpoint images are made by the agent. Anything else is refused.
POLICY = {"default": [{"type": "reject"}], "transports": {
    "docker": {"localhost": [{"type": "insecureAcceptAnything"}]},
    "oci": {"": [{"type": "insecureAcceptAnything"}]},
    "oci-archive": {"": [{"type": "insecureAcceptAnything"}]},
    "containers-storage": {"": [{"type": "insecureAcceptAnything"}]}}}

# The kubelet asks for hugepage limits in every container; CRI-O passes them on because /proc/cgroups lists
# hugetlb, but that controller sits on the v2 hierarchy here (unmounted in the node) and runc fails
# ("cannot set hugetlb limit"). CRI-O 1.36 cannot be told to drop them, so runc is wrapped.
RUNC_WRAPPER = f"""#!/bin/sh
# runc, minus linux.resources.hugepageLimits (see lab/crio.py).
bundle=''
prev=''
for a in "$@"; do
	if [ "$prev" = "--bundle" ] || [ "$prev" = "-b" ]; then bundle=$a; fi
	case $a in --bundle=*) bundle=${{a#--bundle=}} ;; esac
	prev=$a
done
if [ -n "$bundle" ] && [ -f "$bundle/config.json" ]; then
	python3 - "$bundle/config.json" <<'PY'
import json, os, sys
path = sys.argv[1]
spec = json.load(open(path))
if spec.get("linux", {{}}).get("resources", {{}}).pop("hugepageLimits", None) is not None:
    json.dump(spec, open(path + ".tmp", "w"))
    os.rename(path + ".tmp", path)
PY
fi
exec {RUNC} "$@"
"""


def storage_conf(directory: Path) -> str:
    return (f'[storage]\ndriver = "overlay"\ngraphroot = "{directory / "storage"}"\n'
            'runroot = "/run/containers/storage"\n')


def crio_conf(directory: Path, wrapper: Path) -> str:
    """``directory``: the node's own (seen inside at the same path)."""
    return f"""[crio]
root = "{directory / "storage"}"
runroot = "/run/containers/storage"
storage_driver = "overlay"
log_dir = "/var/log/crio/pods"
version_file = "/run/crio/version"
version_file_persist = "{directory / "crio-lib" / "version"}"
clean_shutdown_file = "{directory / "crio-lib" / "clean.shutdown"}"

[crio.api]
listen = "{SOCKET}"
stream_address = "127.0.0.1"
stream_port = "0"

[crio.runtime]
default_runtime = "runc"
cgroup_manager = "cgroupfs"
conmon_cgroup = "pod"
# 1.36: checkpoint AND restore from a checkpoint image in CreateContainer (1.37 moves this to
# [crio.checkpoint_restore] container_level_enabled = "checkpoint_restore").
enable_criu_support = true
pinns_path = "/opt/lpm/crio/pinns"
namespaces_dir = "/run/crio/ns"
selinux = false
hooks_dir = []

[crio.runtime.runtimes.runc]
runtime_path = "{wrapper}"
runtime_type = "oci"
runtime_root = "/run/runc"
monitor_path = "/usr/bin/conmon"
monitor_cgroup = "pod"

[crio.image]
# No signature_policy key: set, CRI-O 1.36 refuses every restore ("signature validation is not supported
# for container restore"); unset, /etc/containers/policy.json still governs ordinary creates.
pause_image = "localhost/lpm-pause:1"
pause_command = ""

[crio.network]
network_dir = "/etc/cni/net.d"
plugin_dirs = ["/usr/lib/cni"]

[crio.metrics]
enable_metrics = false
"""


def write_config(directory: Path) -> None:
    """crio.conf, containers' storage.conf and policy.json, and the runc wrapper, under ``directory``."""
    containers = directory / "etc" / "containers"
    containers.mkdir(parents=True, exist_ok=True)
    (containers / "storage.conf").write_text(storage_conf(directory))
    (containers / "policy.json").write_text(json.dumps(POLICY))
    (directory / "crio-lib").mkdir(exist_ok=True)
    wrapper = directory / "etc" / "runc-nohugetlb"
    wrapper.write_text(RUNC_WRAPPER)
    wrapper.chmod(0o755)
    (directory / "etc" / "crio.conf").write_text(crio_conf(directory, wrapper))
