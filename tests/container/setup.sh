#!/usr/bin/env bash
# Prepares what the container test needs on a machine like CI's (Debian 12, root, no
# Docker Hub): a Docker daemon, a Debian base image made with debootstrap (cached as
# xfer-base:bookworm), and the project image built on it (xfer:test). Any step that
# cannot be done is printed; the test then skips, naming the reason.
set -uo pipefail
cd "$(dirname "$0")/../.."
BASE=xfer-base:bookworm
IMAGE=${XFER_TEST_IMAGE:-xfer:test}
CA=/etc/ssl/certs/ca-certificates.crt

say() { echo "[test-container] $*"; }

if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
  say "installing docker.io and debootstrap (Debian packages)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null \
    || { say "could not install docker.io/debootstrap"; exit 0; }
fi
# Debian's client has BuildKit built in (the --secret flag needs it); a newer client
# without the buildx plugin cannot build with BuildKit.
DOCKER=docker
if ! docker buildx version >/dev/null 2>&1 && [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; fi
if ! $DOCKER info >/dev/null 2>&1; then
  say "starting dockerd"
  (nohup dockerd >/tmp/xfer-dockerd.log 2>&1 &)
  for _ in $(seq 30); do $DOCKER info >/dev/null 2>&1 && break; sleep 1; done
  $DOCKER info >/dev/null 2>&1 || { say "no Docker daemon: see /tmp/xfer-dockerd.log"; exit 0; }
fi
if ! $DOCKER image inspect $BASE >/dev/null 2>&1; then
  say "building $BASE with debootstrap (Docker Hub is not reachable)"
  start=$(date +%s)
  rootfs=$(mktemp -d)
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" \
      http://deb.debian.org/debian >/tmp/xfer-debootstrap.log 2>&1 \
    || { say "debootstrap failed: see /tmp/xfer-debootstrap.log"; exit 0; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | $DOCKER import - $BASE >/dev/null || { say "docker import failed"; exit 0; }
  rm -rf "$rootfs"
  say "$BASE built in $(( $(date +%s) - start ))s"
fi
say "building $IMAGE on $BASE"
start=$(date +%s)
secret=(); [ -f $CA ] && secret=(--secret id=ca,src=$CA)
DOCKER_BUILDKIT=1 $DOCKER build -q --build-arg BASE_IMAGE=$BASE "${secret[@]}" -t "$IMAGE" . >/tmp/xfer-build.log 2>&1 \
  || { say "image build failed:"; tail -30 /tmp/xfer-build.log; exit 0; }
say "$IMAGE built in $(( $(date +%s) - start ))s, $($DOCKER image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.2f GB", $1/1e9}')"
