"""Validation of numeric settings shared by the estimation modules (messages name the setting)."""

from __future__ import annotations

import math
import operator

from closedloop.errors import ConfigError

__all__ = ["check_freq", "check_int", "check_positive", "check_rate"]


#: The highest sampling rate accepted (Hz): no EMG amplifier samples faster; a larger number is a unit slip
#: (e.g. a period in ns), and the estimator's spectral tables grow with the rate.
MAX_RATE_HZ = 1e6


def check_rate(rate_hz: float, name: str = "rate_hz") -> float:
    try:
        rate = float(rate_hz)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} = {rate_hz!r}: must be a finite number of Hz > 0") from None
    if not (math.isfinite(rate) and rate > 0):
        raise ConfigError(f"{name} = {rate_hz!r}: must be a finite number of Hz > 0")
    if rate > MAX_RATE_HZ:
        raise ConfigError(f"{name} = {rate_hz!r}: above {MAX_RATE_HZ:g} Hz, faster than any EMG amplifier samples")
    return rate


def check_int(value: int, name: str, lo: int, hi: int | None = None) -> int:
    allowed = f"an integer in {lo}..{hi}" if hi is not None else f"an integer >= {lo}"
    if isinstance(value, bool):
        raise ConfigError(f"{name} = {value!r}: must be {allowed}")
    try:
        v = operator.index(value)
    except TypeError:
        raise ConfigError(f"{name} = {value!r}: must be {allowed}") from None
    if v < lo or (hi is not None and v > hi):
        raise ConfigError(f"{name} = {value!r}: must be {allowed}")
    return v


def check_freq(value: float, name: str, rate: float) -> float:
    """A frequency strictly between 0 and the Nyquist frequency."""
    nyq = rate / 2.0
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} = {value!r}: must be a number of Hz with 0 < {name} < {nyq:g} (rate/2)") from None
    if not (math.isfinite(f) and 0.0 < f < nyq):
        raise ConfigError(f"{name} = {value!r}: must be a number of Hz with 0 < {name} < {nyq:g} (rate/2)")
    return f


def check_positive(value: float, name: str, unit: str = "seconds") -> float:
    """A finite number > 0."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} = {value!r}: must be a finite number of {unit} > 0") from None
    if not (math.isfinite(v) and v > 0):
        raise ConfigError(f"{name} = {value!r}: must be a finite number of {unit} > 0")
    return v
