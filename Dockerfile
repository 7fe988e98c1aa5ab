# syntax=docker/dockerfile:1
# The D_LR Gradio app as a container (also a Hugging Face Docker Space: UID 1000, port 7860).
#
#   docker build -t dlr-hf .
#   docker run --rm -p 7860:7860 -v dlr-hf-data:/home/user/.cache/dlr-hf dlr-hf
#
# CPU by default. For NVIDIA GPUs pick a CUDA base image and the matching torch wheel index
# (the base only needs glibc; Python is installed into a venv when the base has none):
#
#   docker build -t dlr-hf:cuda \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#   docker run --rm --gpus all -p 7860:7860 dlr-hf:cuda
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# A CUDA (Ubuntu) base has no Python: install it there; python:3.11-slim already has it.
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv

# torch first, pinned, from the CPU (or CUDA) wheel index: an unpinned torch pulls CUDA wheels.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

WORKDIR /home/user/app
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

COPY pyproject.toml README.md app.py ./
COPY dlr_hf ./dlr_hf
RUN pip install --no-cache-dir --no-deps .

# Hugging Face Spaces run containers as UID 1000 (an Ubuntu base already has a user 1000: reuse it).
RUN if id -u 1000 >/dev/null 2>&1; then usermod -l user -d /home/user -m "$(id -nu 1000)"; \
    else useradd --create-home --uid 1000 user; fi \
    && mkdir -p /home/user/.cache/dlr-hf \
    && chown -R 1000:1000 /home/user
USER 1000
ENV HOME=/home/user \
    DLR_HF_CACHE=/home/user/.cache/dlr-hf \
    DLR_HF_HISTORY_DB=/home/user/.cache/dlr-hf/history.sqlite \
    DLR_HF_LOCAL_ROOTS=/home/user/.cache/dlr-hf \
    GRADIO_ANALYTICS_ENABLED=False \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    HF_HOME=/home/user/.cache/huggingface

# Build the offline demo (rich and lazy checkpoints on the digits) into the image: the app starts at once.
RUN python -c "from dlr_hf.engine import ensure_demo; ensure_demo()"

EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/', timeout=8)"]

CMD ["python", "app.py"]
