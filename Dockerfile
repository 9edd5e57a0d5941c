# lpm node agent and collector image.
# BASE_IMAGE is a build argument so the image can be built where no registry is reachable, on a
# base made locally from a Debian rootfs (see issue 6); pin it by digest in production.
ARG BASE_IMAGE=debian:trixie-slim

FROM ${BASE_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY watcher ./watcher
COPY gc ./gc
RUN python3 -m venv /opt/lpm \
 && /opt/lpm/bin/pip install --no-cache-dir .

FROM ${BASE_IMAGE}
# python3: the runtime; no compiler, no pip, no shell tools beyond the base.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/lpm /opt/lpm
ENV PATH=/opt/lpm/bin:$PATH PYTHONUNBUFFERED=1
# Runs as root only because the kubelet's checkpoint directory is root-owned 0700; the
# DaemonSet's securityContext drops every capability it does not need.
ENTRYPOINT ["lpm"]
CMD ["agent"]
