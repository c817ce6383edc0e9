"""HDETACH_DATABASE_PASSWORD_FILE and HDETACH_API_TOKENS_FILE: secrets read from files (compose
secrets), the password put into the database URL so that any character works."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from deployment.settings import Settings
from studies.db.engine import make_engine
from tests.conftest import POSTGRES_ADMIN

HARD_PASSWORD = "p@ss/w:rd%41 é?#&="  # @ / : % and more: each would break a URL written by hand


def _entrypoint():
    path = Path(__file__).resolve().parents[2] / "docker" / "dashboard_entrypoint.py"
    spec = importlib.util.spec_from_file_location("dashboard_entrypoint", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_password_file_goes_into_the_url_and_round_trips(tmp_path):
    (tmp_path / "pw").write_text(HARD_PASSWORD + "\n")  # the trailing newline is not the password's
    settings = Settings(
        database_url="postgresql://hdetach@db.example:5432/hdetach", database_password_file=tmp_path / "pw"
    )
    url = make_url(settings.database_url)
    assert url.password == HARD_PASSWORD
    assert (url.username, url.host, url.port, url.database) == ("hdetach", "db.example", 5432, "hdetach")
    # the dashboard's entry point (urllib.parse.quote) builds a URL that SQLAlchemy reads the same way
    dashboard = make_url(
        _entrypoint().storage_url(
            {
                "HDETACH_DATABASE_URL": "postgresql://hdetach@db.example:5432/hdetach",
                "HDETACH_DATABASE_PASSWORD_FILE": str(tmp_path / "pw"),
            }
        )
    )
    assert dashboard.password == HARD_PASSWORD and dashboard.drivername == "postgresql+psycopg"


def test_only_trailing_newlines_are_stripped(tmp_path):
    (tmp_path / "pw").write_text("  inner\nline \n\n")
    settings = Settings(database_url="postgresql://u@h/d", database_password_file=tmp_path / "pw")
    assert make_url(settings.database_url).password == "  inner\nline "


@pytest.mark.postgres
def test_the_driver_presents_exactly_the_files_password_to_postgresql(tmp_path):
    # The local server trusts every connection, so it does not check passwords; what it can show is
    # that the role exists with this password set and that libpq was handed exactly the file's text.
    role = f"hdetach_pw_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(
            psycopg.sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                psycopg.sql.Identifier(role), psycopg.sql.Literal(HARD_PASSWORD)
            )
        )
    try:
        (tmp_path / "pw").write_text(HARD_PASSWORD + "\n")
        settings = Settings(
            database_url=f"postgresql://{role}@127.0.0.1:5432/test", database_password_file=tmp_path / "pw"
        )
        engine = make_engine(settings.database_url)
        try:
            with engine.connect() as conn:
                info = conn.connection.dbapi_connection.info  # type: ignore[union-attr]
                assert info.user == role and info.password == HARD_PASSWORD
        finally:
            engine.dispose()
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("DROP ROLE {}").format(psycopg.sql.Identifier(role)))


def test_tokens_file_one_per_line_or_comma_separated(tmp_path):
    (tmp_path / "tokens").write_text("token-a\ntoken-b,token-c\n")
    settings = Settings(environment="production", api_tokens_file=tmp_path / "tokens").for_serving()
    assert settings.tokens() == {"token-a", "token-b", "token-c"}
    (tmp_path / "tokens").write_text("change-me\n")
    with pytest.raises(ValueError, match="placeholder"):
        Settings(environment="production", api_tokens_file=tmp_path / "tokens").for_serving()
    (tmp_path / "tokens").write_text("ключ\n")
    with pytest.raises(ValueError, match="HDETACH_API_TOKENS_FILE: tokens must be printable ASCII"):
        Settings(api_tokens_file=tmp_path / "tokens").for_serving()


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"database_password_file": "/nonexistent/pw"}, "HDETACH_DATABASE_PASSWORD_FILE: cannot read"),
        ({"api_tokens_file": "/nonexistent/tokens"}, "HDETACH_API_TOKENS_FILE: cannot read"),
        ({"api_tokens_file": "EMPTY"}, "HDETACH_API_TOKENS_FILE: .* is empty"),
        ({"api_tokens_file": "TOKENS", "api_tokens": "other"}, "both set"),
        ({"database_password_file": "PW", "database_url": "postgresql://u:old@h/d"}, "holds a password"),
        ({"database_password_file": "PW", "database_url": "sqlite:///x.db"}, "SQLite"),
    ],
)
def test_bad_secret_files_are_refused(tmp_path, kwargs, needle):
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "pw").write_text("secret\n")
    (tmp_path / "tokens").write_text("token-a\n")
    files = {"EMPTY": tmp_path / "empty", "PW": tmp_path / "pw", "TOKENS": tmp_path / "tokens"}
    kwargs = {k: files.get(v, v) for k, v in kwargs.items()}
    kwargs.setdefault("database_url", "postgresql://u@h/d")
    with pytest.raises(ValueError, match=needle):  # the tokens' rules: when they are to be served
        Settings(**kwargs).for_serving()


def test_an_unreadable_file_is_a_one_line_start_up_error(tmp_path):
    env = {
        "HDETACH_DATABASE_URL": "postgresql://u@127.0.0.1:5432/d",
        "HDETACH_DATABASE_PASSWORD_FILE": str(tmp_path / "missing"),
        "PATH": "/usr/bin:/bin",
    }
    run = subprocess.run(
        [sys.executable, "-m", "hdetach", "serve"], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0, run.stderr
    assert "HDETACH_DATABASE_PASSWORD_FILE: cannot read" in run.stderr and str(tmp_path) in run.stderr
