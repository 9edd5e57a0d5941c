#!/usr/bin/env bash
# Two CRI-O nodes, by hand: n0 checkpoints a counter through CRI (CheckpointContainer), lpm ingests the
# archive into a store, lpm's standalone restorer on n1 imports it into n1's containers-storage (skopeo,
# in n1's namespaces), and n1 restores it through CRI CreateContainer in a new sandbox; the counter must go
# on from its checkpointed value. The recipe of docs/crio-node.md as one script; everything it makes is
# removed at the end (KEEP=1 keeps the scratch directory, never the processes or cgroups).
#
# Usage (root): docs/crio-node/demo.sh [runc|crun]
# Environment: LPM_CACHE_DIR (default REPO/.cache: the builds and the trixie rootfs), LPM_PYTHON (a
# python with lpm's dependencies; default REPO/.venv/bin/python).
set -euo pipefail

runtime=${1:-runc}
[[ $runtime == runc || $runtime == crun ]] || { echo "demo: runtime must be runc or crun" >&2; exit 2; }
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
export LPM_CACHE_DIR=${LPM_CACHE_DIR:-$repo/.cache}
python=${LPM_PYTHON:-$repo/.venv/bin/python}
rootfs=$LPM_CACHE_DIR/rootfs/trixie-v5
now() { date +%s.%N; }
took() { printf '%.3f' "$(echo "$(now) - $1" | bc)"; }
say() { echo "demo: $*" >&2; }

t=$(now)
crio_dir=$("$repo/scripts/node/build-crio.sh" | tail -n1)
crictl_bin=$("$repo/scripts/node/build-crictl.sh" | tail -n1)
runc_bin=$("$repo/scripts/node/build-runc.sh" | tail -n1)
say "binaries ready in $(took "$t") s: $crio_dir $crictl_bin $runc_bin"
[[ -x $rootfs/usr/sbin/criu ]] || { echo "demo: no trixie rootfs at $rootfs (scripts/criu/build-rootfs.sh)" >&2; exit 1; }

W=$(mktemp -d /var/tmp/lpm-crio-demo.XXXXXX)
chmod 0755 "$W"
mkdir -p "$W/images" "$W/store"
cgroup=lpm-crio-demo-$$
declare -A INIT=() HOLDER=() CRIO=()
agent_pid=''
node_path=/opt/lpm/crio:/opt/lpm/runc:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# Run a command inside node $1 (all its namespaces), or crictl against its CRI-O.
in_node() { local node=$1; shift; nsenter -t "${INIT[$node]}" -m -u -n -p -- env -i "PATH=$node_path" HOME=/root "$@"; }
cri() { local node=$1; shift; in_node "$node" /opt/lpm/crictl/crictl --config "$W/$node/crictl.yaml" "$@"; }

hierarchies() { find /sys/fs/cgroup -mindepth 1 -maxdepth 1 -type d ! -name unified; }
cleanup() {
	set +eu
	[[ -n $agent_pid ]] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
	local t node
	t=$(now)
	for node in "${!INIT[@]}"; do
		# A shell as its PID namespace's init ignores SIGTERM: without -t 0 each stop waits out 30 s of grace.
		cri "$node" stop -t 0 $(cri "$node" ps -q 2>/dev/null) >/dev/null 2>&1
		cri "$node" rmp -af >/dev/null 2>&1
		[[ -n ${CRIO[$node]:-} ]] && kill -TERM "${CRIO[$node]}" 2>/dev/null
	done
	sleep 1
	for node in "${!INIT[@]}"; do
		# The node's init (catatonit, its PID 1): the kernel ends every process of the namespace with it.
		kill -KILL "${INIT[$node]}" 2>/dev/null
	done
	for node in "${!HOLDER[@]}"; do
		kill -KILL -- "-${HOLDER[$node]}" 2>/dev/null
		wait "${HOLDER[$node]}" 2>/dev/null
	done
	# Only the cgroups made here, depth first; the kernel lets go of a cgroup once its tasks are reaped.
	for h in $(hierarchies); do
		[[ -d $h/$cgroup ]] || continue
		for _ in $(seq 50); do
			find "$h/$cgroup" -depth -type d -exec rmdir {} \; 2>/dev/null
			[[ -d $h/$cgroup ]] || break
			sleep 0.2
		done
		[[ -d $h/$cgroup ]] && echo "demo: $h/$cgroup stays busy" >&2
	done
	# Never created here, and unmounted inside the nodes, yet a crun container that CRIU dumped or restored
	# leaves empty cgroups of our parent's name in the v2 hierarchy (.../libpod_parent): remove those too.
	local v2=/sys/fs/cgroup/unified/$cgroup
	if [[ -d $v2 ]]; then
		say "removing $(find "$v2" -type d | wc -l) empty cgroups that $runtime/CRIU left in $v2"
		find "$v2" -depth -type d -exec rmdir {} \;
	fi
	say "nodes stopped and cgroups removed in $(took "$t") s"
	if [[ ${KEEP:-0} == 1 ]]; then say "kept $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT

# The sandbox and workload images: one layer with the rootfs's static busybox (lab/images.py).
(cd "$repo" && "$python" -c "
import sys; from pathlib import Path; from lab.images import node_images
node_images(Path(sys.argv[1]), Path(sys.argv[2]))" "$rootfs" "$W/images")

# cgroups: one root of our own in every v1 hierarchy (an empty cpuset admits no task: copy the parent's).
for h in $(hierarchies); do
	mkdir -p "$h/$cgroup"
	if [[ $(basename "$h") == cpuset ]]; then
		cat "$h/cpuset.cpus" >"$h/$cgroup/cpuset.cpus"
		cat "$h/cpuset.mems" >"$h/$cgroup/cpuset.mems"
	fi
done

start_node() { # NAME: private mount/uts/net/pid namespaces rooted in the rootfs, CRI-O inside
	local node=$1 L=$W/$1 t init=''
	mkdir -p "$L"/{kubelet,etc/containers,cni-conf,cni-state,storage,crio-lib,log,ckpt,local-store,restore-work,empty-ckpt,cri}
	sed -e "s|@LAB@|$L|g" -e "s|^default_runtime = .*|default_runtime = \"$runtime\"|" "$here/crio.conf" >"$L/etc/crio.conf"
	sed "s|@LAB@|$L|g" "$here/storage.conf" >"$L/etc/containers/storage.conf"
	cp "$here/policy.json" "$L/etc/containers/policy.json"
	echo 'unqualified-search-registries = []' >"$L/etc/containers/registries.conf"
	cp "$here/10-lpm.conflist" "$L/cni-conf/"
	printf 'runtime-endpoint: unix:///run/crio/crio.sock\nimage-endpoint: unix:///run/crio/crio.sock\ntimeout: 120\n' \
		>"$L/crictl.yaml"
	t=$(now)
	setsid "$here/start-node.sh" "$L" "$rootfs" "$crio_dir" "$(dirname "$runc_bin")" "$(dirname "$crictl_bin")" \
		"$node" </dev/null >"$L/holder.log" 2>&1 &
	HOLDER[$node]=$!
	# unshare stays in the host's PID namespace; its child is the node's init, whose namespaces we enter.
	for _ in $(seq 100); do
		init=$(awk '{print $1}' "/proc/${HOLDER[$node]}/task/${HOLDER[$node]}/children" 2>/dev/null)
		[[ -n $init ]] && nsenter -t "$init" -m -- test -e /run/lpm-node-ready 2>/dev/null && break
		init=''
		sleep 0.1
	done
	[[ -n $init ]] || { cat "$L/holder.log" >&2; echo "demo: $node never came up" >&2; exit 1; }
	INIT[$node]=$init
	say "$node: namespaces up in $(took "$t") s (init pid $init)"
	t=$(now)
	for image in pause busybox; do
		# Through a path the node sees: only its own directory is bind-mounted into it.
		cp "$W/images/$image.tar" "$L/$image.tar"
		in_node "$node" skopeo copy --quiet "oci-archive:$L/$image.tar" "containers-storage:localhost/lpm-$image:1"
	done
	say "$node: pause and busybox images imported with skopeo in $(took "$t") s"
	t=$(now)
	setsid nsenter -t "$init" -m -u -n -p -- env -i "PATH=$node_path" HOME=/root \
		crio --config "$L/etc/crio.conf" --config-dir "" </dev/null >"$L/crio.log" 2>&1 &
	local crio_nsenter=$!
	for _ in $(seq 300); do
		cri "$node" version >/dev/null 2>&1 && break
		sleep 0.1
	done
	CRIO[$node]=$(awk '{print $1}' "/proc/$crio_nsenter/task/$crio_nsenter/children")
	say "$node: crio up in $(took "$t") s: $(cri "$node" version 2>/dev/null | tr -s ' \n' ' ')"
}

# CRI requests shaped like the kubelet's: the pod and container labels lpm reads the identity from, a PID
# namespace per container (a shared one needs an infra container, whose oom_score_adj -998 is refused here).
pod_json() { # NODE NAME UID
	cat <<JSON
{"metadata": {"name": "$2", "namespace": "default", "uid": "$3", "attempt": 0},
 "hostname": "$2", "log_directory": "/var/log/pods/default_$2_$3",
 "labels": {"io.kubernetes.pod.name": "$2", "io.kubernetes.pod.namespace": "default", "io.kubernetes.pod.uid": "$3"},
 "linux": {"cgroup_parent": "/$cgroup/$1-$2", "security_context": {"namespace_options": {"pid": 1}}}}
JSON
}
container_json() { # POD UID IMAGE [COMMAND-JSON]
	local command=''
	[[ -z ${4:-} ]] || command="\"command\": $4,"
	cat <<JSON
{"metadata": {"name": "counter"}, "image": {"image": "$3"}, $command
 "log_path": "counter.log",
 "labels": {"io.kubernetes.container.name": "counter", "io.kubernetes.pod.name": "$1",
            "io.kubernetes.pod.namespace": "default", "io.kubernetes.pod.uid": "$2"},
 "annotations": {"io.kubernetes.container.hash": "0c0ffee0", "io.kubernetes.container.restartCount": "0"},
 "linux": {"security_context": {"namespace_options": {"pid": 1}}}}
JSON
}

start_node n0
start_node n1

# --- n0: the counter, checkpointed through CRI ------------------------------------------------------------
uid_a=$(cat /proc/sys/kernel/random/uuid)
pod_json n0 counter-a "$uid_a" >"$W/n0/cri/pod.json"
container_json counter-a "$uid_a" localhost/lpm-busybox:1 \
	'["/bin/sh", "-c", "i=0; while true; do echo $i; i=$((i+1)); sleep 1; done"]' >"$W/n0/cri/counter.json"
pod_a=$(cri n0 runp --runtime "$runtime" "$W/n0/cri/pod.json")
ctr_a=$(cri n0 create "$pod_a" "$W/n0/cri/counter.json" "$W/n0/cri/pod.json")
cri n0 start "$ctr_a" >/dev/null
sleep 5
# Exported under the kubelet's archive name: lpm ingest takes the pod and container from it.
archive=$W/n0/ckpt/checkpoint-counter-a_default-counter-$(date -u +%Y-%m-%dT%H:%M:%SZ).tar
t=$(now)
cri n0 checkpoint --export="$archive" "$ctr_a" >/dev/null
say "n0: CheckpointContainer in $(took "$t") s: $(stat -c %s "$archive") bytes"
dumped=$(tar -xOf "$archive" io.kubernetes.cri-o.LogPath | tail -n1 | awk '{print $4}')
say "n0: the counter was at $dumped when dumped (it keeps running on n0)"

# --- lpm: ingest n0's archive; n1's standalone restorer imports it into n1's containers-storage ------------
t=$(now)
uri=$(cd "$repo" && "$python" -m watcher ingest "$archive" --store "$W/store" --node n0 --target-node n1)
say "lpm ingest in $(took "$t") s: $uri"
t=$(now)
# The import prefix enters n1's mount AND pid namespaces: with the mount namespace alone, skopeo sees the
# node's /proc without itself in it ("open /proc/self/status: no such file or directory").
(cd "$repo" && exec "$python" -m watcher agent --standalone --restore --node n1 --checkpoint-dir "$W/n1/empty-ckpt" \
	--store "$W/store" --importer containers-storage --import-prefix "nsenter -t ${INIT[n1]} -m -p --" \
	--marker-poll 0.5 --health-port 0 --local-store "$W/n1/local-store" --restore-work-dir "$W/n1/restore-work") \
	>"$W/n1/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 600); do
	compgen -G "$W/n1/restore-work/imported/*.json" >/dev/null && break
	sleep 0.1
done
record=$(compgen -G "$W/n1/restore-work/imported/*.json" | head -n1) || { cat "$W/n1/agent.log" >&2; exit 1; }
image=$("$python" -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["outcome"]=="imported", r; print(r["images"]["counter"])' "$record")
import_s=$("$python" -c 'import json,sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("msg") == "checkpoint images ready to restore": print(r["seconds"])' "$W/n1/agent.log")
say "n1: lpm agent imported $image ($import_s s to verify and import; $(took "$t") s after the agent started)"
kill "$agent_pid"; wait "$agent_pid" 2>/dev/null || true; agent_pid=''

# --- n1: restore through CRI CreateContainer, in a new sandbox ---------------------------------------------
uid_b=$(cat /proc/sys/kernel/random/uuid)
pod_json n1 counter-b "$uid_b" >"$W/n1/cri/pod.json"
container_json counter-b "$uid_b" "$image" >"$W/n1/cri/counter.json"
pod_b=$(cri n1 runp --runtime "$runtime" "$W/n1/cri/pod.json")
t=$(now)
ctr_b=$(cri n1 create "$pod_b" "$W/n1/cri/counter.json" "$W/n1/cri/pod.json")
cri n1 start "$ctr_b" >/dev/null
say "n1: CreateContainer + StartContainer (the restore) in $(took "$t") s"
sleep 3
cri n1 logs -t "$ctr_b" >"$W/n1/restored.log" 2>&1
# The restored container's log starts with the checkpointed container's own lines (CRI-O carries them in
# the archive), then the restored process writes on: the numbers must run on with no gap and no repeat.
"$python" - "$W/n1/restored.log" "$dumped" <<'PY'
import sys
values = [int(f[1]) for f in (line.split() for line in open(sys.argv[1])) if len(f) == 2 and f[1].isdigit()]
dumped = int(sys.argv[2])
assert values == list(range(values[0], values[0] + len(values))), f"gap or repeat: {values}"
assert values[-1] > dumped, f"nothing after the checkpoint: {values}"
print(f"demo: n1: restored counter: ... {dumped} (checkpointed on n0) | {dumped + 1}, ..., {values[-1]}: no gap, no repeat")
PY
echo "demo: OK ($runtime): CRI-O $(cri n1 version 2>/dev/null | awk '/RuntimeVersion/ {print $2}') on n1 restored n0's checkpoint through CRI CreateContainer"
