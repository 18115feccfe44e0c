#!/usr/bin/env bash
# Build the Dockerfile's CPU image and run the pipeline inside it, on a machine that reaches PyPI and Debian's
# mirror but neither Docker Hub nor download.pytorch.org (this project's CI machines):
#   - the base image (python:3.11-slim-bookworm upstream) is replaced by Debian bookworm's python3.11 made with
#     debootstrap and `docker import` (same Debian release and Python minor version as the upstream image);
#   - torch comes from a local wheel directory served over HTTP (--build-arg TORCH_SOURCE), everything else from
#     PyPI under constraints.txt, exactly as in a normal build.
# Then, inside the container: sample data → a MagicBrush conversion → `smartedit shards verify`.
#
#   sudo bash bench/docker_build.sh [WHEEL_DIR]        # needs a running Docker engine and debootstrap
#
# A machine that reaches Docker Hub and the PyTorch index needs none of this: `docker build -t smartedit:cpu .`
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${1:-/opt/wheels}
BASE=smartedit-base:py311-bookworm
PORT=${SMARTEDIT_WHEEL_PORT:-8765}

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    root=$(mktemp -d)
    debootstrap --variant=minbase --include=python3,python3-pip,python3-venv bookworm "$root" http://deb.debian.org/debian
    rm -f "$root"/usr/lib/python3.11/EXTERNALLY-MANAGED      # an image's own Python, as in python:3.11-slim
    ln -sf python3 "$root/usr/bin/python"; ln -sf pip3 "$root/usr/bin/pip"
    # the build reaches PyPI as this host does: trust the CAs this host trusts (a TLS-intercepting registry proxy)
    cp /etc/ssl/certs/ca-certificates.crt "$root/usr/local/share/ca-certificates/build-host.crt"
    chroot "$root" update-ca-certificates >/dev/null
    tar -C "$root" -c . | docker import - "$BASE"
    rm -rf "$root"
fi

python3 -m http.server "$PORT" --directory "$WHEELS" --bind 127.0.0.1 >/dev/null 2>&1 &
server=$!
trap 'kill $server' EXIT

start=$(date +%s)
docker build --network host -t smartedit:cpu-offline \
    --build-arg PYTHON_IMAGE="$BASE" --build-arg TORCH_SOURCE="--find-links http://127.0.0.1:$PORT/" .
echo "docker build: $(( $(date +%s) - start )) s"

docker run --rm smartedit:cpu-offline bash -c '
    set -e
    python -c "import torch, transformers, diffusers, prefect; print(\"torch\", torch.__version__, \"prefect\", prefect.__version__)"
    smartedit samples make /tmp/s >/dev/null
    smartedit convert magicbrush --root /tmp/s/magicbrush --out /tmp/shards
    smartedit shards verify /tmp/shards'
docker image ls smartedit:cpu-offline
