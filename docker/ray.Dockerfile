# A Ray node for the compose `ray` profile: the worker image's CUDA torch plus Ray Tune.
# The head container also runs `hdetach ray-run --watch`, the driver that feeds Ray studies to Tune.
FROM nvidia/cuda:12.6.3-runtime-ubuntu24.04

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 VIRTUAL_ENV=/opt/venv
ENV PATH="/opt/venv/bin:$PATH"
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv procps \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
WORKDIR /app
# PyPI's default torch wheel for Linux x86_64 is the CUDA build.
RUN pip install --no-cache-dir torch==2.13.0
COPY pyproject.toml README.md ./
COPY studies ./studies
COPY workers ./workers
COPY service ./service
COPY hdetach ./hdetach
RUN pip install --no-cache-dir ".[ray]" \
    && useradd --create-home --uid 10001 hdetach \
    && mkdir -p /data/ray_results && chown hdetach /data/ray_results
USER 10001
HEALTHCHECK --interval=30s --timeout=10s --retries=3 CMD ["ray", "status"]
CMD ["ray", "start", "--head", "--port=6379", "--block"]
