"""Voluntary-drive profiles: what the simulated participant tries to do, over time (drive 0..1)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from closedloop.errors import ConfigError

__all__ = ["DriveProfile", "demo_profile", "named_profile", "trapezoids"]


@dataclass(frozen=True)
class DriveProfile:
    """Piecewise-linear voluntary drive: ``drive(t)`` interpolates ``(times_s, levels)``.

    Before the first point the drive is the first level; after the last, the last level.
    """

    times_s: tuple[float, ...]
    levels: tuple[float, ...]
    name: str = "custom"

    def __post_init__(self) -> None:
        t = np.asarray(self.times_s, dtype=float)
        lv = np.asarray(self.levels, dtype=float)
        if t.ndim != 1 or t.shape != lv.shape or t.size == 0:
            raise ConfigError("drive profile needs equally many times and levels (at least one)")
        if np.any(np.diff(t) < 0) or not np.isfinite(t).all():
            raise ConfigError("drive profile times must be finite and non-decreasing")
        if not (np.isfinite(lv).all() and lv.min() >= 0 and lv.max() <= 1):
            raise ConfigError("drive profile levels must lie in 0..1")
        object.__setattr__(self, "_t", t)
        object.__setattr__(self, "_lv", lv)

    def __call__(self, t_s: np.ndarray | float) -> np.ndarray:
        """Drive at times ``t_s`` (seconds from the start of the profile)."""
        return np.interp(t_s, self._t, self._lv)

    def drive_at(self, timestamps: np.ndarray, start: float | None) -> np.ndarray:
        """Drive at absolute ``timestamps`` for a profile started at ``start`` (rest before it, or if None)."""
        if start is None:
            return np.zeros(len(timestamps))
        return np.where(timestamps >= start, self(timestamps - start), 0.0)


def trapezoids(
    levels: Sequence[float],
    start_s: float = 2.0,
    ramp_s: float = 1.0,
    hold_s: float = 3.0,
    rest_s: float = 2.0,
    until_s: float = 3600.0,
    prefix: Sequence[tuple[float, float]] = (),
    name: str = "trapezoids",
) -> DriveProfile:
    """Repeated trapezoidal contractions cycling through ``levels``, from ``start_s`` to ``until_s``."""
    pts = list(prefix) or [(0.0, 0.0)]
    t = start_s
    i = 0
    while t < until_s:
        lv = levels[i % len(levels)]
        pts += [(t, 0.0), (t + ramp_s, lv), (t + ramp_s + hold_s, lv), (t + 2 * ramp_s + hold_s, 0.0)]
        t += 2 * ramp_s + hold_s + rest_s
        i += 1
    times, lvls = zip(*pts, strict=True)
    return DriveProfile(tuple(times), tuple(lvls), name)


#: Phases of the demo, matched by :func:`demo_profile`: rest 1 s, MVC calibration 3 s, rest 1 s, assist.
DEMO_CALIBRATION = (1.0, 4.0)
DEMO_CONTROL_START = 5.0


def demo_profile(va: float = 0.95) -> DriveProfile:
    """The demo participant: a maximal contraction (drive ``va``) from 1.3 to 3.2 s, then trapezoids from 5 s."""
    mvc = [(0.0, 0.0), (1.0, 0.0), (1.3, va), (3.2, va), (3.5, 0.0)]
    return trapezoids(
        (0.3, 0.5, 0.2, 0.4), start_s=DEMO_CONTROL_START, ramp_s=1.0, hold_s=3.0, rest_s=1.5, prefix=mvc, name="demo"
    )


def named_profile(spec: str) -> DriveProfile:
    """Profile by name: ``demo``, ``trapezoids``, ``rest`` or ``constant:LEVEL``."""
    if spec == "demo":
        return demo_profile()
    if spec == "trapezoids":
        return trapezoids((0.3, 0.5, 0.2, 0.4))
    if spec == "rest":
        return DriveProfile((0.0,), (0.0,), "rest")
    if spec.startswith("constant:"):
        try:
            level = float(spec.split(":", 1)[1])
        except ValueError:
            level = float("nan")
        return DriveProfile((0.0,), (level,), spec)
    raise ConfigError(f"unknown drive profile {spec!r}; allowed: demo, trapezoids, rest, constant:LEVEL (0..1)")
