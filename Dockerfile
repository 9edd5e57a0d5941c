# lpm node agent and collector image.
# The base is pinned by digest: debian:trixie-slim as published on 2026-09-18 (its multi-platform
# index; the dated tag names the same content). Bump both together. BASE_IMAGE stays a build
# argument so the image can be built where no registry is reachable, on a base made locally from a
# Debian rootfs (scripts/image/build-base.sh, lab/lpmimage.py; issue 6).
ARG BASE_IMAGE=debian:trixie-20260918-slim@sha256:a99cfc517144bc59b1978475ec53b46ecabec7e43635402ee5b77cc54cd1b20a

# DL3008 (pin apt versions) is ignored on purpose: the base is pinned, Debian stable only takes
# security and point-release fixes, and exact versions would break the build at every point release.
FROM ${BASE_IMAGE} AS build
# python3-venv brings pip (ensurepip) into the venv; no system pip needed.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The dependencies first, each file checked against its hash in the lock (scripts/lock writes it,
# the suite tests those very versions): a layer of its own, reused while only lpm's code changes.
COPY lock/image.txt ./lock/image.txt
RUN python3 -m venv /opt/lpm \
 && /opt/lpm/bin/pip install --no-cache-dir --require-hashes -r lock/image.txt
COPY pyproject.toml README.md ./
# watcher/ carries watcher/inspect/criu_pb/, CRIU's image definitions compiled by scripts/setup
# (scripts/criu/build-images-py.sh; git-ignored): build the image after setup, or `lpm inspect` in it
# says they are missing. The package data takes them into the venv.
COPY watcher ./watcher
COPY gc ./gc
# lpm itself, with nothing more fetched: no dependencies, the locked build backend. Then the build
# tools leave the venv.
RUN /opt/lpm/bin/pip install --no-cache-dir --no-deps --no-build-isolation . \
 && /opt/lpm/bin/pip uninstall --yes setuptools pip

FROM ${BASE_IMAGE}
# python3: the runtime; skopeo: what the agent executes to import a checkpoint image into
# containers-storage (watcher/restore/importer.py); netavark only because skopeo's containers-common
# needs some container-network-stack and it is the smaller one (containernetworking-plugins: 55 MB).
# No compiler, no pip, no shell tools beyond the base.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 skopeo netavark \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/lpm /opt/lpm
ENV PATH=/opt/lpm/bin:$PATH PYTHONUNBUFFERED=1
# Runs as root only because the kubelet's checkpoint directory is root-owned 0700; the
# DaemonSet's securityContext drops every capability it does not need.
ENTRYPOINT ["lpm"]
CMD ["agent"]
