"""Deployment settings, from the environment (prefix HDETACH_) or a .env file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from studies.spec import SpecLimits

PLACEHOLDER_TOKEN = "change-me"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HDETACH_", env_file=".env", extra="ignore")

    database_url: str = "sqlite:///hdetach.db"  # SQLite file (embedded default) or postgresql://...
    # a file holding the database password (a compose secret), put into database_url, which then has none
    database_password_file: Path | None = None
    lease_seconds: float = Field(
        60.0, gt=0
    )  # a claimed job is presumed abandoned this long after its last heartbeat
    heartbeat_seconds: float = Field(10.0, gt=0)  # how often a worker renews its leases
    poll_seconds: float = Field(2.0, gt=0)  # how long an idle worker waits before asking again
    max_attempts: int = Field(3, ge=1)  # attempts per grid cell before it is marked failed
    max_grid_size: int = Field(10_000, ge=1)  # largest study accepted
    max_T: int = Field(2_000, ge=1)  # longest copying delay / adding length accepted
    max_steps: int = Field(1_000_000, ge=1)  # largest step budget per trial accepted
    max_hidden_size: int = Field(2_048, ge=1)  # largest LSTM accepted
    environment: Literal["development", "production"] = "development"  # production serves only real tokens
    api_tokens: str = PLACEHOLDER_TOKEN  # comma-separated bearer tokens, printable ASCII; writes need one
    api_tokens_file: Path | None = (
        None  # a file of tokens, comma- or newline-separated, instead of api_tokens
    )
    read_requires_token: bool = False  # whether reads need a token too (all but /healthz and /readyz)
    max_body_bytes: int = Field(1 << 20, ge=1024)  # larger request bodies are refused (413) unread
    host: str = "127.0.0.1"  # `hdetach serve` address
    port: int = Field(8000, ge=1, le=65535)  # `hdetach serve` port
    ray_address: str | None = None  # Ray cluster for `hdetach ray-run`; unset: RAY_ADDRESS, else a local Ray
    ray_storage_path: str | None = None  # where Ray Tune keeps its experiment state (unset: ~/ray_results)
    # the directory MNIST specs may read (mnist_root within it); holding the IDX files, the default
    # for MNIST studies. Workers must see it at the same path. Unset: MNIST only with allow_subset
    mnist_dir: str | None = None

    @field_validator(
        "ray_address",
        "ray_storage_path",
        "database_password_file",
        "api_tokens_file",
        "mnist_dir",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value or None  # `HDETACH_RAY_ADDRESS=` in an .env file means "not set"

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, value: str) -> str:
        return check_database_url(value)

    @model_validator(mode="after")
    def _secrets_from_files(self) -> Settings:
        if self.database_password_file is not None:
            password = _read_secret(self.database_password_file, "HDETACH_DATABASE_PASSWORD_FILE")
            url = make_url(self.database_url)  # parseable: checked by _supported_database
            if url.get_backend_name() == "sqlite":
                raise ValueError("HDETACH_DATABASE_PASSWORD_FILE is set but HDETACH_DATABASE_URL is SQLite")
            if url.password is not None:
                raise ValueError(
                    "HDETACH_DATABASE_URL holds a password and HDETACH_DATABASE_PASSWORD_FILE is set: use one"
                )
            # URL.set takes the password as it is; rendering percent-encodes it, so any character works
            self.database_url = url.set(password=password).render_as_string(hide_password=False)
        return self

    def for_serving(self) -> Settings:
        """These settings with their API tokens read and checked, for a process that serves the API
        (`hdetach serve`, `service.create_app`): the tokens from HDETACH_API_TOKENS_FILE if set,
        printable ASCII, and outside development real ones. Only a process that checks tokens asks,
        so a CLI command in a folder whose .env still holds the placeholder works (ValueError)."""
        tokens = self.api_tokens
        if self.api_tokens_file is not None:
            if "api_tokens" in self.model_fields_set:
                raise ValueError("HDETACH_API_TOKENS and HDETACH_API_TOKENS_FILE are both set: use one")
            text = _read_secret(self.api_tokens_file, "HDETACH_API_TOKENS_FILE")
            tokens = ",".join(line.strip() for line in text.splitlines())
            _check_tokens(tokens, "HDETACH_API_TOKENS_FILE")
        else:
            _check_tokens(tokens, "HDETACH_API_TOKENS")
        serving = self.model_copy(update={"api_tokens": tokens, "api_tokens_file": None})
        if self.environment != "development":
            if not serving.tokens():
                raise ValueError("HDETACH_API_TOKENS is empty: production needs at least one token")
            if PLACEHOLDER_TOKEN in serving.tokens():
                raise ValueError(
                    "HDETACH_API_TOKENS still holds the placeholder token; set real tokens in production"
                )
        return serving

    def tokens(self) -> set[str]:
        return {t.strip() for t in self.api_tokens.split(",") if t.strip()}

    def spec_limits(self) -> SpecLimits:
        return SpecLimits(
            max_grid_size=self.max_grid_size,
            max_T=self.max_T,
            max_steps=self.max_steps,
            max_hidden_size=self.max_hidden_size,
            mnist_dir=self.mnist_dir,
        )


SUPPORTED_DATABASES = ("sqlite", "postgresql", "postgres")  # postgres:// is read as postgresql://


def check_database_url(url: str) -> str:
    """A database URL this project can open (SQLite or PostgreSQL), or ValueError naming the problem:
    the one home of that rule, for HDETACH_DATABASE_URL and `--database-url` alike."""
    try:
        backend = make_url(url).get_backend_name()
    except ArgumentError:
        raise ValueError(f"HDETACH_DATABASE_URL: {url!r} is not a database URL") from None
    if backend not in SUPPORTED_DATABASES:  # e.g. mysql://: its driver would fail with a traceback
        raise ValueError(
            f"HDETACH_DATABASE_URL: {backend} is not supported; use sqlite:///FILE or postgresql://..."
        )
    return url


def is_token_text(token: str) -> bool:
    """Whether `token` can be a bearer token: printable ASCII without spaces, what an HTTP header
    carries (anything else could never be presented)."""
    return all(0x21 <= ord(c) <= 0x7E for c in token)


def _check_tokens(value: str, name: str) -> str:
    tokens = [t.strip() for t in value.split(",")]
    if not all(is_token_text(token) for token in tokens):
        raise ValueError(f"{name}: tokens must be printable ASCII, without spaces")
    return value


def _read_secret(path: Path, name: str) -> str:
    """A secret file's text, its trailing newlines stripped (as the postgres image's `$(< file)`)."""
    try:
        text = path.read_text(encoding="utf-8").rstrip("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(
            f"{name}: cannot read {path}: {e.strerror if isinstance(e, OSError) else e}"
        ) from None
    if not text:
        raise ValueError(f"{name}: {path} is empty")
    return text


def setting_default(name: str) -> Any:
    """A setting's default, for options that take the setting's value (its one home is Settings)."""
    return Settings.model_fields[name].default
