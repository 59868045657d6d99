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
# Each build of changed sources leaves the image this tag named before (3.6 GB, now
# untagged) and about 4.7 GB of BuildKit cache; unchecked, a few builds fill the disk
# (CI failed so: "no space left on device" at COPY). Check the room first, and after the
# build drop the old image and keep only the newest 8 GB of cache (the dependency layer
# and uv's cache mount, which the next build reuses).
root_dir=$($DOCKER info -f '{{.DockerRootDir}}' 2>/dev/null || echo /var/lib/docker)
free_gb=$(df --output=avail -B1G "$root_dir" | tail -1 | tr -d ' ')
if [ "${free_gb:-0}" -lt 12 ]; then
  say "only ${free_gb} GB free under $root_dir; building $IMAGE needs about 12 GB (a 3.6 GB image and its build)."
  say "free some: docker image prune -f; docker builder prune -f --keep-storage 8GB"
  exit 1
fi
old_id=$($DOCKER image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
say "building $IMAGE on $BASE"
start=$(date +%s)
secret=(); [ -f $CA ] && secret=(--secret id=ca,src=$CA)
DOCKER_BUILDKIT=1 $DOCKER build -q --build-arg BASE_IMAGE=$BASE "${secret[@]}" -t "$IMAGE" . >/tmp/xfer-build.log 2>&1 \
  || { say "image build failed:"; tail -30 /tmp/xfer-build.log
         # Never test an image of older sources under this tag.
         $DOCKER image rm "$IMAGE" >/dev/null 2>&1; exit 1; }
say "$IMAGE built in $(( $(date +%s) - start ))s, $($DOCKER image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.2f GB", $1/1e9}')"
new_id=$($DOCKER image inspect -f '{{.Id}}' "$IMAGE")
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
  $DOCKER image rm "$old_id" >/dev/null 2>&1 && say "removed the previous $IMAGE (${old_id:7:12})"
fi
$DOCKER builder prune -f --keep-storage 8GB >/dev/null 2>&1 || true
say "disk under $root_dir: $(df -h --output=avail "$root_dir" | tail -1 | tr -d ' ') free"
