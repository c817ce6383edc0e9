"""How `hdetach` ends when it cannot do what was asked: one line on stderr (one per field for an
invalid spec or settings) and an exit code that says whose move it is. The codes' one home:

    0  done
    1  the study refuses: no study with that id, or not in a state for that (requeue a
       cancelled study, delete one with running jobs)
    2  bad arguments, spec or settings (typer's own usage errors too): fix them and run again
    3  (worker) its device failed the start-up check; 4 halted; 5 a CUDA error (see `worker --help`)
    6  the database is unreachable (not running, wrong host or port, refused the login)
    7  no database there: a SQLite file that does not exist, or a database without our tables
       (or with older ones): `hdetach db upgrade` creates or migrates it
    8  (--api) the REST service is unreachable, is not one (a wrong URL), refuses the token
       (HDETACH_API_TOKEN), or fails

A supervisor restarts a worker that exits 6 (the database may come back), never one that exits 2.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from pydantic import ValidationError

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_DATABASE_UNREACHABLE = 6  # the same code as workers.worker's (not imported here: torch)
EXIT_NO_DATABASE = 7
EXIT_API = 8  # --api: the service is unreachable, not ours, refuses the token, or fails

EXIT_CODES_HELP = (
    "Exit codes: 0 done; 1 the study refuses (no such id, or not in a state for that); 2 bad "
    "arguments, spec or settings; 6 the database is unreachable; 7 no database there, or one "
    "without our tables (run `hdetach db upgrade`); 8 (with --api) the service is unreachable or not "
    "one, refuses the token (HDETACH_API_TOKEN) or fails."
)


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """`message` on stderr, one line per line of it, each starting "error: "; exit `code`."""
    for line in message.splitlines() or [""]:
        typer.echo(f"error: {line}", err=True)
    raise typer.Exit(code)


def refuse(message: str) -> NoReturn:
    fail(message, EXIT_REFUSED)


def one_line(text: object) -> str:
    """A message folded into one line (drivers' messages span several)."""
    return " ".join(str(text).split())


# "not this alternative's type": pydantic reports one per branch of a union the value did not take
_WRONG_BRANCH = frozenset({"model_type", "model_attributes_type", "dict_type", "list_type", "float_type"})


def validation_lines(error: ValidationError, prefix: str = "") -> str:
    """Every error of a validation, one per line, each naming its field (a rule across fields names
    none). A union's branches are not fields: `learning_rates.list[...].0` is `learning_rates.0`,
    and the branches the value's type rules out are left out while another says what is wrong."""
    return field_lines(error.errors(include_url=False), prefix)


def field_lines(errors: Iterable[Mapping[str, Any]], prefix: str = "") -> str:
    """`validation_lines` of pydantic's error records (`loc`, `type`, `msg`): from a ValidationError
    here, or from the `errors` of the API's 422, whose `loc` starts with "body"."""
    found = []
    for item in errors:
        where = ".".join(str(p) for p in item["loc"] if isinstance(p, int) or "[" not in p)
        found.append((where, item["type"], item["msg"].removeprefix("Value error, ")))
    lines: list[str] = []
    for where, kind, message in found:
        related = [w for w, k, _ in found if k not in _WRONG_BRANCH and (w + ".").startswith(where + ".")]
        if kind in _WRONG_BRANCH and related:
            continue
        line = f"{prefix}{where}: {message}" if where else f"{prefix}{message}"
        if line not in lines:
            lines.append(line)
    return "\n".join(lines)


def shown_url(url: str) -> str:
    """A database URL fit for a log: the password hidden."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@contextmanager
def database_errors(url: str) -> Iterator[None]:
    """Turn a database that is missing, not ours or unreachable into one line and its exit code."""
    from sqlalchemy.exc import DatabaseError, InterfaceError, OperationalError

    from studies.exceptions import NoDatabase

    try:
        yield
    except NoDatabase as error:
        fail(str(error), EXIT_NO_DATABASE)
    except (OperationalError, InterfaceError) as error:
        reason = one_line(error.orig if error.orig is not None else error)
        fail(
            f"database {shown_url(url)} unreachable: {reason} (check the server and HDETACH_DATABASE_URL)",
            EXIT_DATABASE_UNREACHABLE,
        )
    except DatabaseError as error:  # it answered, but not as a database of ours (a file that is not SQLite)
        reason = one_line(error.orig if error.orig is not None else error)
        unreadable = f"database {shown_url(url)} cannot be read: {reason} (check HDETACH_DATABASE_URL)"
        fail(unreadable, EXIT_NO_DATABASE)


@contextmanager
def api_errors(url: str) -> Iterator[None]:
    """With --api: what the service answers that is not about a study (an unknown study or a
    refused state reach the command as NotFound and Conflict, as from the database) as one line:
    an invalid spec one line per field (exit 2), the rest exit 8."""
    import httpx

    from hdetach.client import ApiError, BadClientSetting, NotTheService

    try:
        yield
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as error:
        fail(f"--api {url}: {one_line(error)}: give the service's URL, e.g. http://head:8000")
    except BadClientSetting as error:
        fail(str(error))
    except NotTheService as error:
        fail(f"{error} (check --api)", EXIT_API)
    except httpx.TransportError as error:
        fail(f"API {url} unreachable: {type(error).__name__}: {one_line(error)} (check --api)", EXIT_API)
    except ApiError as error:
        problem = error.problem
        if problem.status in (401, 403):
            fail(f"API {url} refused the request ({problem.detail}): set HDETACH_API_TOKEN", EXIT_API)
        if problem.status == 422 and problem.errors:
            in_body = [{**e.model_dump(), "loc": e.loc[1:]} for e in problem.errors if e.loc[:1] == ["body"]]
            elsewhere = [e.model_dump() for e in problem.errors if e.loc[:1] != ["body"]]
            lines = [field_lines(in_body, "invalid spec: "), field_lines(elsewhere, "invalid request: ")]
            fail("\n".join(line for line in lines if line))
        if problem.status < 500:
            code = EXIT_REFUSED if problem.status in (404, 409) else EXIT_USAGE
            fail(f"API {url}: {one_line(problem.detail)}", code)
        fail(f"API {url} failed: {problem.status} {problem.title}: {one_line(problem.detail)}", EXIT_API)
