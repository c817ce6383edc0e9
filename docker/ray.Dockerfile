# A Ray node for the compose `ray` profile: the worker image's torch plus Ray Tune. The head container
# also runs `hdetach ray-run --watch`, the driver that feeds Ray studies to Tune.
# Same base and TORCH_INDEX_URL as docker/worker.Dockerfile: cu130 (default) needs NVIDIA driver >= 580,
# https://download.pytorch.org/whl/cu126 needs >= 525.
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /app
COPY constraints.txt ./
RUN pip install --no-cache-dir -c constraints.txt --extra-index-url "${TORCH_INDEX_URL}" torch==2.13.0
COPY pyproject.toml README.md ./
COPY studies ./studies
COPY deployment ./deployment
COPY workers ./workers
COPY service ./service
COPY hdetach ./hdetach
RUN pip install --no-cache-dir -c constraints.txt ".[ray,mnist]" \
    && useradd --create-home --uid 10001 hdetach \
    && mkdir -p /data/ray_results && chown hdetach /data/ray_results
USER 10001
HEALTHCHECK --interval=30s --timeout=10s --retries=3 CMD ["ray", "status"]
CMD ["ray", "start", "--head", "--port=6379", "--block"]
