# optuna-dashboard on the same database as the API and the workers, versions from constraints.txt.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY constraints.txt ./
RUN pip install --no-cache-dir -c constraints.txt optuna-dashboard optuna "psycopg[binary]" \
    && useradd --create-home --uid 10001 dashboard
COPY docker/dashboard_entrypoint.py ./
USER 10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/api/meta', timeout=4)"]
# The database URL is built at run time from HDETACH_DATABASE_URL (no password) and the password in
# the file named by HDETACH_DATABASE_PASSWORD_FILE (a compose secret): nothing secret in the image.
CMD ["python", "/app/dashboard_entrypoint.py"]
