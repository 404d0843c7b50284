"""Fatigue trends: smoothing and slope per minute of the per-interval fatigue indices."""

from __future__ import annotations

import math

import numpy as np

from closedloop.errors import ConfigError

__all__ = ["decline", "smooth", "trend"]


def smooth(t_s: np.ndarray, values: np.ndarray, window_s: float) -> np.ndarray:
    """Moving mean of ``values`` over the preceding ``window_s`` seconds (causal), ignoring NaN.

    ``t_s`` must be non-decreasing; the result at ``t`` averages the finite values with
    ``t - window_s < t_k <= t``. Vectorised (cumulative sums and ``searchsorted``).
    """
    if window_s < 0:
        raise ConfigError(f"smoothing window {window_s} s must be >= 0")
    t = np.asarray(t_s, dtype=float)
    v = np.asarray(values, dtype=float)
    ok = np.isfinite(v)
    csum = np.concatenate([[0.0], np.cumsum(np.where(ok, v, 0.0))])
    ccnt = np.concatenate([[0], np.cumsum(ok)])
    lo = np.searchsorted(t, t - window_s, side="right")
    hi = np.arange(1, t.size + 1)
    n = ccnt[hi] - ccnt[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (csum[hi] - csum[lo]) / np.maximum(n, 1), np.nan)


def trend(t_s: np.ndarray, values: np.ndarray, smoothing_s: float = 5.0) -> dict:
    """Summary of an index over a session.

    Returns ``first`` and ``last`` (smoothed over ``smoothing_s`` at the first and last finite values),
    ``change_pct`` (last relative to first), ``slope_per_min`` (least-squares line through all finite raw
    values, per minute) and ``n``. Values are None when fewer than 2 finite values exist.
    """
    t = np.asarray(t_s, dtype=float)
    v = np.asarray(values, dtype=float)
    ok = np.isfinite(v) & np.isfinite(t)
    if ok.sum() < 2:
        return {"first": None, "last": None, "change_pct": None, "slope_per_min": None, "n": int(ok.sum())}
    t, v = t[ok], v[ok]
    first = float(np.mean(v[t <= t[0] + smoothing_s]))
    last = float(np.mean(v[t >= t[-1] - smoothing_s]))
    tm = (t - t[0]) / 60.0
    slope = float(np.polyfit(tm, v, 1)[0]) if np.ptp(tm) > 0 else math.nan
    change = (last / first - 1.0) * 100.0 if first != 0 else math.nan
    return {"first": first, "last": last, "change_pct": change, "slope_per_min": slope, "n": int(ok.sum())}


def decline(
    t_s: np.ndarray,
    values: np.ndarray,
    *,
    reference_n: int = 5,
    decline_fraction: float = 0.1,
    smoothing_s: float = 5.0,
) -> dict:
    """How fast an index declines from its start (a fatigue test's M-wave, median frequency or force).

    The index is taken relative to the mean of its first ``reference_n`` finite values. Returns
    ``slope_pct_per_min`` (least-squares line through the relative values, % of the start per minute),
    ``change_pct`` (last ``smoothing_s`` relative to the start), ``time_to_decline_s`` (from the first
    value until the causal ``smoothing_s`` mean first falls to ``1 - decline_fraction`` of the start; None
    if it never does), ``reference`` (the start value, in the index's units) and ``n``.
    """
    if reference_n < 1 or not 0 < decline_fraction < 1:
        raise ConfigError(f"reference_n = {reference_n}, decline_fraction = {decline_fraction}: need >= 1 and 0..1")
    t = np.asarray(t_s, dtype=float)
    v = np.asarray(values, dtype=float)
    ok = np.isfinite(v) & np.isfinite(t)
    t, v = t[ok], v[ok]
    empty = {"slope_pct_per_min": None, "change_pct": None, "time_to_decline_s": None, "reference": None}
    if t.size < reference_n + 2 or np.ptp(t) <= 0:
        return {**empty, "n": int(t.size)}
    ref = float(np.mean(v[:reference_n]))
    if ref == 0:
        return {**empty, "n": int(t.size)}
    rel = v / ref
    slope = float(np.polyfit((t - t[0]) / 60.0, rel * 100.0, 1)[0])
    last = float(np.mean(rel[t >= t[-1] - smoothing_s]))
    below = np.flatnonzero(smooth(t, rel, smoothing_s) <= 1.0 - decline_fraction)
    return {
        "slope_pct_per_min": slope,
        "change_pct": (last - 1.0) * 100.0,
        "time_to_decline_s": float(t[below[0]] - t[0]) if below.size else None,
        "reference": ref,
        "n": int(t.size),
    }
