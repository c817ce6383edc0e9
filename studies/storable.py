"""What the databases can hold: text without NUL or lone surrogates, integers within 32 bits.

The spec is the gate: a value it accepts is stored (PostgreSQL and SQLite), turned into Optuna
params and seeds, and read back by every report; these types refuse, at validation, what one of
them would fail on later.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field

DB_INT_MAX = 2**31 - 1  # our integer columns (seeds, ids, priorities) are INTEGER: signed 32-bit


def storable_text(value: str) -> str:
    """`value` if both databases can store it: PostgreSQL refuses NUL, neither encodes a lone surrogate."""
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\u0000) characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"must be valid Unicode text: a lone surrogate at position {error.start}") from None
    return value


def integral(value: object) -> object:
    """A float with an integral value as that int (JSON Schema's integers include 2.0); the rest as is,
    for the strict int validation that follows to refuse (booleans, strings, 2.5, NaN)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


StorableText = Annotated[str, AfterValidator(storable_text)]
JSONInt = Annotated[int, BeforeValidator(integral)]  # use in strict models: not true, not "3"; 2.0 is 2
Seed = Annotated[JSONInt, Field(ge=0, le=DB_INT_MAX)]
