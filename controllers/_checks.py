"""Parameter validation and output helpers shared by the controllers (internal)."""

from __future__ import annotations

import itertools
import math

from closedloop.errors import ConfigError

__all__ = ["TIME_EPS_S", "as_amplitude", "check_int", "check_real", "check_times"]

#: Tolerance (s) when comparing a decision time with a segment boundary: ``t_s`` is computed by the
#: orchestrator as a multiple of the period, so a pulse meant to fall on a boundary may miss it by an ulp.
TIME_EPS_S = 1e-9


def _allowed(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"a finite number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"a finite number {'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"a finite number {'<' if hi_open else '<='} {hi:g}"
    return "a finite number"


def check_real(
    owner: object,
    name: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    unit: str = "",
) -> float:
    """Check ``owner.<name>`` is a finite real in the given range, store it as a float and return it."""
    value = getattr(owner, name)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        value = float(value)
        ok = not (
            (lo is not None and (value <= lo if lo_open else value < lo))
            or (hi is not None and (value >= hi if hi_open else value > hi))
        )
    if not ok:
        allowed = _allowed(lo, hi, lo_open, hi_open) + (f" ({unit})" if unit else "")
        raise ConfigError(f"{type(owner).__name__} {name} = {value!r}: must be {allowed}")
    setattr(owner, name, value)
    return value


def check_int(owner: object, name: str, *, lo: int, hi: int | None = None) -> int:
    """Check ``owner.<name>`` is a whole number in ``[lo, hi]`` and return it."""
    value = getattr(owner, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        allowed = f"a whole number >= {lo}" if hi is None else f"a whole number in [{lo}, {hi}]"
        raise ConfigError(f"{type(owner).__name__} {name} = {value!r}: must be {allowed}")
    return value


def check_times(owner: object, name: str, *, strict: bool, allow_empty: bool) -> tuple[float, ...]:
    """Check ``owner.<name>`` is a sequence of finite times >= 0 (s) in increasing order; store it as a tuple."""
    raw = getattr(owner, name)
    order = "strictly increasing" if strict else "non-decreasing"
    allowed = f"a list of finite times >= 0 s in {order} order" + ("" if allow_empty else ", at least one")
    try:
        values = tuple(raw)
    except TypeError:
        values = None
    if values is None or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in values
    ):
        raise ConfigError(f"{type(owner).__name__} {name} = {raw!r}: must be {allowed}")
    values = tuple(float(v) for v in values)
    if (not values and not allow_empty) or any((b <= a if strict else b < a) for a, b in itertools.pairwise(values)):
        raise ConfigError(f"{type(owner).__name__} {name} = {raw!r}: must be {allowed}")
    setattr(owner, name, values)
    return values


def as_amplitude(value: float, max_ma: float) -> float:
    """``value`` as a pulse amplitude: 0 if it is not a finite positive number, at most ``max_ma``."""
    if not value > 0.0:  # also NaN
        return 0.0
    return min(float(value), max_ma)
