# SmartEdit pipeline image: the flows, the model code and every pinned dependency, for Prefect's Docker and
# Kubernetes work pools (prefect.cluster.yaml, README "Running at scale").
#
#   docker build -t smartedit:cpu .                                   # CPU: converters, synthetic build on CPU, tests
#   docker build -t smartedit:cuda --build-arg VARIANT=cuda .         # CUDA: training, SAM / inpainting, evaluation
#
# Both variants install torch FIRST from the PyTorch index of the variant (a CPU wheel, or a CUDA wheel that
# brings its CUDA runtime as pip packages: the host only needs the NVIDIA driver and container toolkit), then
# everything else pinned by constraints.txt, as `make venv` does. Python 3.11 (pyproject's requires-python).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ARG VARIANT=cpu
# CUDA wheels of torch 2.13: the cu128 index (override with --build-arg CUDA_INDEX=cu126 for older drivers)
ARG CUDA_INDEX=cu128
ARG TORCH=torch==2.13.0
ARG TORCHVISION=torchvision==0.29.2

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 SMARTEDIT_ROOT=/opt/smartedit

# libgl/glib for OpenCV-headless' optional bits, git for Prefect's git pull steps
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends libglib2.0-0 git ca-certificates \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/smartedit

# Where torch comes from: the PyTorch index of the variant, unless TORCH_SOURCE gives pip other options (a mirror,
# or a directory of wheels: --build-arg TORCH_SOURCE="--find-links http://127.0.0.1:8765/", as
# bench/docker_build.sh does on a machine that reaches PyPI but not download.pytorch.org).
ARG TORCH_SOURCE=""
RUN case "$VARIANT" in \
      cpu)  index=https://download.pytorch.org/whl/cpu ;; \
      cuda) index="https://download.pytorch.org/whl/$CUDA_INDEX" ;; \
      *) echo "VARIANT must be cpu or cuda, got $VARIANT" >&2; exit 1 ;; \
    esac \
    && if [ -n "$TORCH_SOURCE" ]; then pip install "$TORCH" $TORCH_SOURCE; else pip install "$TORCH" --index-url "$index"; fi

# dependencies before the code, so a code change rebuilds only the last layers
COPY pyproject.toml constraints.txt README.md ./
COPY data_specs/ data_specs/
COPY smartedit_cli/ smartedit_cli/
COPY flows/ flows/
COPY pipeline/ pipeline/
COPY model/ model/
RUN PIP_CONSTRAINT=constraints.txt pip install -e ".[s3]" \
    && PIP_CONSTRAINT=constraints.txt pip install --no-deps "$TORCHVISION" \
    && if [ "$VARIANT" = cpu ]; then python -c "from pipeline.compat.torchvision_ops import write_pth; write_pth()"; fi \
    && python -c "import flows.convert, flows.train, model.train; print('smartedit image ok')"

COPY prefect.yaml prefect.cluster.yaml ./
