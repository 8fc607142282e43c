"""Checks for model arguments; each failure is one MbqError line."""
from __future__ import annotations

from ..errors import MbqError


def positive_int(what: str, value) -> int:
    # bool is an int subclass; `True` channels is a mistake, not 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MbqError(f"{what} must be a positive integer, got {value!r}")
    return value


def positive_number(what: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise MbqError(f"{what} must be a positive number, got {value!r}")
    return value


def scaled(base: int, mult: float) -> int:
    """Channel count ``base * mult``, rounded, never below 1."""
    return max(1, int(round(base * mult)))
