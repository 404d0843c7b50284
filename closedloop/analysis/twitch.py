"""Twitch interpolation: voluntary activation from superimposed and resting (potentiated) doublets.

Merton (1954); the doublet form as in e.g. Gandevia (2001), Physiol Rev 81:1725-1789::

    VA = (1 - superimposed twitch / resting twitch) x 100 %

A *twitch* is the force a doublet adds: the peak force within ``window_s`` after its first pulse minus the
mean force over ``baseline_s`` just before it, on the force smoothed by a centred ``smooth_s`` moving mean
(a transducer's noise would otherwise bias every peak upwards). A doublet is *superimposed* when the force
before it is at least ``superimposed_fraction`` of the largest force of the recording (the participant is
contracting maximally), *resting* when it is at most ``resting_fraction`` of it; each superimposed doublet is paired
with the first resting doublet that follows within ``pair_within_s`` (the potentiated resting twitch).
The Strojnik & Komi (1998) correction, which scales the superimposed twitch by the ratio of the force at
the doublet to the maximal voluntary force, is given beside it (``va_corrected_pct``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from closedloop.errors import ConfigError

__all__ = ["Doublet", "TwitchResult", "group_bursts", "interpolate_twitches", "measure_doublets"]


@dataclass(frozen=True)
class Doublet:
    """One doublet (or single pulse / burst) and the twitch it evoked.

    ``t`` (s): its first pulse; ``n_pulses``; ``baseline_n`` and ``peak_n`` (N): force before it and the
    largest force within the window after it; ``twitch_n = peak_n - baseline_n``; ``kind``:
    ``"superimposed"``, ``"resting"`` or ``"other"``.
    """

    t: float
    n_pulses: int
    baseline_n: float
    peak_n: float
    kind: str

    @property
    def twitch_n(self) -> float:
        return self.peak_n - self.baseline_n


@dataclass(frozen=True)
class TwitchResult:
    """Voluntary activation per trial (superimposed/resting pair) and over all trials."""

    doublets: tuple[Doublet, ...]
    pairs: tuple[tuple[int, int], ...]
    va_pct: tuple[float, ...]
    va_corrected_pct: tuple[float, ...]
    max_force_n: float

    @property
    def va_mean_pct(self) -> float:
        return float(np.mean(self.va_pct)) if self.va_pct else math.nan

    def as_dict(self) -> dict:
        """JSON-ready: the mean VA and every trial."""
        return {
            "va_pct": self.va_mean_pct,
            "va_corrected_pct": float(np.mean(self.va_corrected_pct)) if self.va_corrected_pct else math.nan,
            "trials": [
                {
                    "superimposed_t": self.doublets[i].t,
                    "resting_t": self.doublets[j].t,
                    "superimposed_twitch_n": self.doublets[i].twitch_n,
                    "resting_twitch_n": self.doublets[j].twitch_n,
                    "force_at_doublet_n": self.doublets[i].baseline_n,
                    "va_pct": va,
                    "va_corrected_pct": vac,
                }
                for (i, j), va, vac in zip(self.pairs, self.va_pct, self.va_corrected_pct, strict=True)
            ],
            "max_force_n": self.max_force_n,
            "n_doublets": len(self.doublets),
        }


def group_bursts(pulse_times: np.ndarray, gap_s: float = 0.05) -> list[tuple[float, int]]:
    """Pulses closer than ``gap_s`` (s) to the previous one form one burst: ``(first pulse time, n pulses)``."""
    t = np.sort(np.asarray(pulse_times, dtype=float))
    if t.size == 0:
        return []
    starts = np.flatnonzero(np.concatenate(([True], np.diff(t) >= gap_s)))
    counts = np.diff(np.append(starts, t.size))
    return [(float(t[i]), int(c)) for i, c in zip(starts, counts, strict=True)]


def measure_doublets(
    t_force: np.ndarray,
    force_n: np.ndarray,
    bursts: list[tuple[float, int]],
    *,
    window_s: float = 0.15,
    baseline_s: float = 0.02,
    superimposed_fraction: float = 0.5,
    resting_fraction: float = 0.1,
    smooth_s: float = 0.01,
) -> tuple[list[Doublet], float]:
    """Twitch of every burst in a force recording (``t_force`` s, ``force_n`` N); returns them and the
    largest force of the recording (N)."""
    t = np.asarray(t_force, dtype=float)
    f = np.asarray(force_n, dtype=float)
    if t.ndim != 1 or t.shape != f.shape or t.size < 2:
        raise ConfigError("twitch interpolation needs a force recording (time and force of equal length)")
    if not (window_s > 0 and baseline_s > 0):
        raise ConfigError(f"window_s = {window_s!r} and baseline_s = {baseline_s!r} must be > 0 s")
    if smooth_s > 0 and t.size > 2:
        half = max(round(float(smooth_s / np.median(np.diff(t)) / 2)), 0)
        if half:
            c = np.concatenate(([0.0], np.cumsum(f)))
            lo = np.clip(np.arange(f.size) - half, 0, f.size)
            hi = np.clip(np.arange(f.size) + half + 1, 0, f.size)
            f = (c[hi] - c[lo]) / (hi - lo)
    f_max = float(np.nanmax(f))
    out = []
    for t0, n in bursts:
        pre = (t >= t0 - baseline_s) & (t < t0)
        post = (t >= t0) & (t <= t0 + window_s)
        if not pre.any() or not post.any():
            continue
        base = float(np.mean(f[pre]))
        peak = float(np.max(f[post]))
        if base >= superimposed_fraction * f_max:
            kind = "superimposed"
        elif base <= resting_fraction * f_max:
            kind = "resting"
        else:
            kind = "other"
        out.append(Doublet(t0, n, base, peak, kind))
    return out, f_max


def interpolate_twitches(doublets: list[Doublet], max_force_n: float, pair_within_s: float = 10.0) -> TwitchResult:
    """Pair each superimposed doublet with the next resting one (within ``pair_within_s``) and compute VA."""
    pairs: list[tuple[int, int]] = []
    va: list[float] = []
    vac: list[float] = []
    used: set[int] = set()
    for i, d in enumerate(doublets):
        if d.kind != "superimposed":
            continue
        j = next(
            (
                k
                for k in range(i + 1, len(doublets))
                if doublets[k].kind == "resting" and k not in used and doublets[k].t - d.t <= pair_within_s
            ),
            None,
        )
        if j is None:
            continue
        rt = doublets[j].twitch_n
        if not rt > 0:
            continue
        used.add(j)
        pairs.append((i, j))
        sit = max(d.twitch_n, 0.0)
        va.append(100.0 * (1.0 - sit / rt))
        vac.append(100.0 * (1.0 - sit * (d.baseline_n / max_force_n) / rt))
    return TwitchResult(tuple(doublets), tuple(pairs), tuple(va), tuple(vac), max_force_n)
