# The REST API (and the one-shot migration). It never trains, so it takes torch's small CPU build.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY constraints.txt ./
RUN pip install --no-cache-dir -c constraints.txt --extra-index-url https://download.pytorch.org/whl/cpu \
    torch==2.13.0
COPY pyproject.toml README.md ./
COPY studies ./studies
COPY deployment ./deployment
COPY workers ./workers
COPY service ./service
COPY hdetach ./hdetach
RUN pip install --no-cache-dir -c constraints.txt . \
    && useradd --create-home --uid 10001 hdetach
USER 10001
EXPOSE 8000
# /readyz answers 200 only while the database is reachable (/healthz only says the process serves)
HEALTHCHECK --interval=15s --timeout=5s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
CMD ["hdetach", "serve", "--host", "0.0.0.0", "--port", "8000"]
