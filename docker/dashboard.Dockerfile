# optuna-dashboard on the same database as the API and the workers.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN pip install --no-cache-dir "optuna-dashboard==0.21.0" "optuna==5.0.0" "psycopg[binary]==3.3.9" \
    && useradd --create-home --uid 10001 dashboard
USER 10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/api/meta', timeout=4)"]
# The URL comes from the environment at run time (never baked in): postgresql+psycopg://...
CMD ["sh", "-c", "exec optuna-dashboard \"$OPTUNA_STORAGE\" --host 0.0.0.0 --port 8080"]
