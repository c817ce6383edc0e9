"""optuna-dashboard's entry point in the dashboard image.

The database URL is built here, at start-up, from HDETACH_DATABASE_URL (a PostgreSQL URL without a
password, as the API and the workers get it) and the password in the file that
HDETACH_DATABASE_PASSWORD_FILE names (a compose secret), percent-encoded with urllib.parse.quote so
that any character works. The URL is handed to optuna-dashboard inside this process: it appears on
no command line and in no environment variable.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from urllib.parse import quote, urlsplit, urlunsplit


def storage_url(environ: Mapping[str, str]) -> str:
    url = environ.get("HDETACH_DATABASE_URL", "")
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres", "postgresql+psycopg") or not parts.hostname:
        raise ValueError("HDETACH_DATABASE_URL must be a postgresql:// URL with a host")
    netloc = parts.netloc
    password_file = environ.get("HDETACH_DATABASE_PASSWORD_FILE")
    if password_file:
        if parts.password is not None:
            raise ValueError(
                "HDETACH_DATABASE_URL holds a password and HDETACH_DATABASE_PASSWORD_FILE is set"
            )
        try:
            with open(password_file, encoding="utf-8") as f:
                password = f.read().rstrip("\n")  # as the postgres image's $(< file) reads it
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"HDETACH_DATABASE_PASSWORD_FILE: cannot read {password_file}: {e}") from None
        if not password:
            raise ValueError(f"HDETACH_DATABASE_PASSWORD_FILE: {password_file} is empty")
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = f"{userinfo}:{quote(password, safe='')}@{hostport}"
    return urlunsplit(("postgresql+psycopg", netloc, parts.path, parts.query, parts.fragment))


def main() -> None:
    try:
        url = storage_url(os.environ)
    except ValueError as e:
        sys.exit(f"error: {e}")
    import optuna
    from optuna_dashboard import run_server

    # optuna-dashboard given a URL expects Optuna's tables to exist; the API and the workers create
    # them, possibly just after this starts. Create them here too (same Optuna version, pinned by
    # constraints.txt), and wait out a database that is not up yet or a race with the others.
    for attempt in range(30):
        try:
            storage = optuna.storages.RDBStorage(url, skip_compatibility_check=True)
            break
        except Exception as e:  # the database's errors come wrapped in several ways
            if attempt == 29:
                raise
            print(f"waiting for the database: {type(e).__name__}", file=sys.stderr, flush=True)
            time.sleep(2)
    port = int(os.environ.get("DASHBOARD_LISTEN_PORT", "8080"))
    run_server(storage, host=os.environ.get("DASHBOARD_LISTEN_HOST", "0.0.0.0"), port=port)


if __name__ == "__main__":
    main()
