# A GPU node's queue workers: `hdetach worker --device all` supervises one worker process per visible
# GPU (times --per-device). A slim Python base: torch's CUDA wheels carry their own CUDA libraries, and
# the host's NVIDIA driver comes in through the NVIDIA Container Toolkit.
# TORCH_INDEX_URL picks the wheels' CUDA: cu130 (default) needs NVIDIA driver >= 580; for older
# drivers or pre-Turing GPUs build with --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
# (driver >= 525). See README, "Deployment".
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /app
COPY constraints.txt ./
# torch's own dependencies come from PyPI, pinned by the constraints; torch itself from the CUDA index
RUN pip install --no-cache-dir -c constraints.txt --extra-index-url "${TORCH_INDEX_URL}" torch==2.13.0
COPY pyproject.toml README.md ./
COPY studies ./studies
COPY deployment ./deployment
COPY workers ./workers
COPY service ./service
COPY hdetach ./hdetach
RUN pip install --no-cache-dir -c constraints.txt ".[mnist]" \
    && useradd --create-home --uid 10001 hdetach
USER 10001
# healthy while a worker process of this container has a fresh heartbeat in the database
HEALTHCHECK --interval=30s --timeout=20s --start-period=180s --retries=3 CMD ["hdetach", "health", "worker"]
CMD ["hdetach", "worker", "--device", "all", "--per-device", "1", "--pack", "32"]
