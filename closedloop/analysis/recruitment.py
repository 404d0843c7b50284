"""Recruitment curves: evoked M-wave (and H-reflex) size versus stimulus intensity.

A recruitment curve is measured by stimulating a nerve or muscle at a series of intensities, several sweeps
(stimuli) per intensity, and measuring the evoked response of each sweep. This module measures the
responses in the sweeps, fits the M-wave curve and summarises the H-reflex.

Model
-----
The M-wave size is a Boltzmann sigmoid of the stimulus intensity ``I`` (mA)::

    M(I) = m_max / (1 + exp((i50 - I) / k))

``m_max`` (the response's unit: uV for recordings, the file's unit for waveform tables) is the plateau,
``i50`` (mA) the intensity of half the plateau, ``k`` (mA) the spread (the curve goes from 10 % to 90 % of
``m_max`` over ``2 ln 9 k = 4.39 k``). Derived:

- ``slope = m_max / (4 k)``: the steepest slope, at ``i50`` (response units per mA);
- ``threshold = i50 - k ln(1/f - 1)``: the intensity where the curve reaches the fraction ``f``
  (``threshold_fraction``, default 0.1) of ``m_max``.

The model has no baseline: peak-to-peak amplitudes of sweeps without a response are the noise's
peak-to-peak, a small positive floor that the fit treats as residual.

Confidence intervals
--------------------
:func:`fit_recruitment` gives every quantity a ``confidence`` (default 95 %) interval:

- ``n_boot == 0`` (default), **delta method**: the covariance ``C`` of ``(m_max, i50, k)`` from the
  least-squares fit (``scipy.optimize.curve_fit``, residual variance estimated from the fit), propagated to
  each quantity ``q`` by its gradient (``var q = g C g^T``), with Student's t quantile on ``n - 3`` degrees
  of freedom. The positive quantities ``m_max``, ``k`` and ``slope`` get their interval on the log scale
  (``q exp(+-t se_q / q)``: asymmetric, never negative); ``i50`` and ``threshold`` a symmetric one.
- ``n_boot > 0``, **percentile bootstrap over sweeps**: the sweeps are resampled with replacement within
  each intensity (so each bootstrap set has the same intensities), refitted ``n_boot`` times, and the
  ``(1 - confidence)/2`` and ``(1 + confidence)/2`` quantiles of each quantity are the interval
  (``ci_method == "bootstrap-sweeps"``). The resampled sweeps' deviations from their intensity's mean are
  scaled by ``sqrt(n/(n - 1))`` (``n`` sweeps at that intensity): plain resampling makes the means vary
  ``(n - 1)/n`` times as much as they do, which with 2-4 sweeps per intensity gives intervals that
  cover 84-89 % instead of 95 %. With the scaling, simulated curves (11 intensities x 3 sweeps) are covered
  91-94 % of the time; the delta method's intervals 94-96 %. When some intensity has a single sweep,
  resampling within intensities cannot vary it: the sweeps are then resampled all together
  (``"bootstrap-pairs"``; sets with fewer than 4 distinct intensities are skipped).

When the fitted curve rises from under 5 % to over 95 % of ``m_max`` between two adjacent intensities (a
step), the data only say that the rise lies in that gap: ``i50`` and the threshold get the gap as their
interval, ``k`` the interval from 0 to the largest ``k`` that fits (``gap / (2 ln 19)``), the slope no upper
limit, whatever the method, and ``notes`` says so.

Measuring the responses
-----------------------
A sweep is a waveform on a time axis in **milliseconds from the stimulus**. The size of a response is the
peak-to-peak amplitude (max - min) of the sweep within its window (``start_ms <= t <= end_ms``).

Windows not given are found from the sweeps (:func:`find_windows`):

1. *Blanking*: only samples at ``t >= blank_ms`` (default 3 ms, the estimators' ``blank_s``) and after any
   leading stretch where every sweep is exactly zero (an amplifier's or exporter's blanking of the stimulus
   artifact) are searched.
2. *Waveforms and envelopes*: each sweep minus its median; per intensity, the mean waveform and the
   envelope: the root mean square across its sweeps at each time, then a running maximum over +-1 ms
   (bridging the zero crossings of a bi- or triphasic wave).
3. *M-wave*: the sweeps at the highest quarter of the intensities (at least one intensity) together. The
   largest value of their envelope after the blanking is the M-wave. If it is not at least 3 times the
   envelope's floor (its 25th percentile there) there is no evoked response to find, and an error says so.
4. *H-reflex*: after the M window, the time where the envelope of some intensity exceeds that of the
   highest intensity the most; the intensity doing so must be neither the lowest nor the highest (the
   H-reflex grows and then declines as the M-wave grows).
5. *Window*: around the response found, the stretch where the envelope exceeds
   ``floor + 0.1 (peak - floor)``; in it, the largest positive and the largest negative deflection of the
   mean waveform. The window spans these two extrema, widened on each side by their separation (at least
   1 ms): the peak-to-peak of a bi- or triphasic wave is taken between its two largest phases, with room
   for their latency to change with intensity, and slower later phases are left out.
6. *Is there an H-reflex?* Only if, in its window, the largest per-intensity mean peak-to-peak (a) is at
   neither end of the intensity range, (b) is at least 1.25 times the mean at the highest intensity, and
   (c) is at least twice the peak-to-peak that noise alone gives in a window of that length
   (``2 sigma sqrt(2 ln n)``; ``sigma`` = the 25th percentile of ``|sweep - median|`` / 0.3186, a noise
   estimate that responses filling half of the samples barely move). Otherwise the H window is absent
   (``h_ms is None``, with the reason); an H-reflex that does not decline within the tested intensities
   needs its window given.

H-reflex
--------
:func:`summarize_h_reflex` reports the largest mean H peak-to-peak over intensities (``h_max``), the
intensity where it occurs and ``h_max / m_max``. :func:`fit_h_reflex` fits the product of a rising and a
falling sigmoid, ``H(I) = a / (1 + exp((i_rise - I)/k_rise)) / (1 + exp((I - i_fall)/k_fall))``: the form of
McKinnon et al. (2023, J Neural Eng 20:046012, their ``HillCurve``) without its floor on the falling side.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage, optimize, special, stats

from acquisition.files import FileFormatError, open_recording
from closedloop.errors import ConfigError

__all__ = [
    "HReflexFit",
    "HReflexSummary",
    "RecruitmentFit",
    "ResponseWindows",
    "Sweeps",
    "boltzmann",
    "find_windows",
    "fit_h_reflex",
    "fit_recruitment",
    "level_summary",
    "peak_to_peak",
    "plot_recruitment",
    "read_waveform_table",
    "summarize_h_reflex",
    "sweeps_from_recording",
    "threshold_intensity",
    "two_sigmoids",
]

DEFAULT_BLANK_MS = 3.0
DEFAULT_EPOCH_MS = (-5.0, 60.0)
_DILATE_MS = 1.0  # running maximum of the envelopes: +- this much
_WINDOW_LEVEL = 0.1  # a window spans the envelope above floor + this fraction of (peak - floor)
_FLOOR_PERCENTILE = 25.0
_M_MIN_SNR = 3.0  # M peak envelope / floor
_H_MIN_DECLINE = 1.25  # H level-mean maximum / mean at the highest intensity
_H_MIN_NOISE_RATIO = 2.0  # H level-mean maximum / expected noise peak-to-peak
_MIN_PAD_MS = 1.0  # least padding of a window on each side of its extrema
_LEVEL_DECIMALS = 6  # intensities equal to 1e-6 mA are one level


# ------------------------------------------------------------------------------------------ model


def boltzmann(intensity: np.ndarray | float, m_max: float, i50: float, k: float) -> np.ndarray:
    """``m_max / (1 + exp((i50 - I) / k))`` at intensities ``I`` (mA); in the unit of ``m_max``.

    Computed with :func:`scipy.special.expit` (no overflow for any ``k > 0``).
    """
    return m_max * special.expit((np.asarray(intensity, dtype=np.float64) - i50) / k)


def threshold_intensity(i50: float, k: float, fraction: float) -> float:
    """Intensity (mA) where the Boltzmann curve reaches ``fraction`` of ``m_max``: ``i50 - k ln(1/f - 1)``."""
    return float(i50 - k * math.log(1.0 / fraction - 1.0))


def _boltzmann_jac(intensity: np.ndarray, m_max: float, i50: float, k: float) -> np.ndarray:
    """``(n, 3)`` derivatives of :func:`boltzmann` with respect to ``(m_max, i50, k)``."""
    u = (intensity - i50) / k
    s = special.expit(u)
    ds = s * (1.0 - s)
    return np.column_stack([s, -m_max * ds / k, -m_max * ds * u / k])


def two_sigmoids(
    intensity: np.ndarray | float, a: float, i_rise: float, k_rise: float, i_fall: float, k_fall: float
) -> np.ndarray:
    """H-reflex model: ``a * expit((I - i_rise)/k_rise) * expit((i_fall - I)/k_fall)`` (I in mA)."""
    x = np.asarray(intensity, dtype=np.float64)
    return a * special.expit((x - i_rise) / k_rise) * special.expit((i_fall - x) / k_fall)


# ---------------------------------------------------------------------------------- fit results


def _json_float(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _json_ci(ci: tuple[float, float]) -> list[float | None]:
    return [_json_float(ci[0]), _json_float(ci[1])]


@dataclass(frozen=True, eq=False)
class RecruitmentFit:
    """A Boltzmann recruitment curve fitted by :func:`fit_recruitment`.

    Attributes
    ----------
    m_max:
        Plateau (response unit, e.g. uV).
    i50:
        Intensity of half the plateau (mA).
    k:
        Spread (mA); the 10-90 % rise takes ``4.39 k``.
    slope:
        ``m_max / (4 k)``, the steepest slope, at ``i50`` (response unit per mA).
    threshold:
        Intensity (mA) where the curve reaches ``threshold_fraction`` of ``m_max``.
    m_max_ci, i50_ci, k_ci, slope_ci, threshold_ci:
        ``(low, high)`` confidence intervals (NaN when they cannot be computed, see ``notes``).
    threshold_fraction, confidence:
        As given.
    ci_method:
        ``"delta"``, ``"bootstrap-sweeps"`` or ``"bootstrap-pairs"`` (see the module docstring).
    n_boot:
        Bootstrap refits that succeeded (0 for the delta method).
    r2, rmse:
        Coefficient of determination and root mean square residual (response unit) over all points.
    n, n_levels:
        Points fitted, distinct intensities.
    covariance:
        ``(3, 3)`` covariance of ``(m_max, i50, k)`` from the fit (may hold inf when singular).
    notes:
        Warnings about the fit (parameters at a bound, an extrapolated plateau, ...).
    """

    m_max: float
    i50: float
    k: float
    slope: float
    threshold: float
    m_max_ci: tuple[float, float]
    i50_ci: tuple[float, float]
    k_ci: tuple[float, float]
    slope_ci: tuple[float, float]
    threshold_ci: tuple[float, float]
    threshold_fraction: float
    confidence: float
    ci_method: str
    n_boot: int
    r2: float
    rmse: float
    n: int
    n_levels: int
    covariance: np.ndarray
    notes: tuple[str, ...] = ()

    def predict(self, intensity: np.ndarray | float) -> np.ndarray:
        """The fitted curve at ``intensity`` (mA)."""
        return boltzmann(intensity, self.m_max, self.i50, self.k)

    def band(self, intensity: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise delta-method confidence band ``(low, high)`` of the curve at ``intensity`` (mA).

        Uses the fit's covariance and the t quantile of :attr:`confidence` (also for bootstrap fits);
        NaN where the covariance is not finite.
        """
        x = np.atleast_1d(np.asarray(intensity, dtype=np.float64))
        y = self.predict(x)
        g = _boltzmann_jac(x, self.m_max, self.i50, self.k)
        se = np.sqrt(np.maximum(np.einsum("ni,ij,nj->n", g, self.covariance, g), 0.0))
        half = _t_quantile(self.confidence, self.n - 3) * se
        return y - half, y + half

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready values: ``m_max``, ``i50_ma``, ``k_ma``, ``slope_per_ma``, ``threshold_ma`` and their
        ``*_ci`` ``[low, high]``, plus the fit's settings and quality (NaN becomes None)."""
        out: dict[str, Any] = {}
        for key, v, ci in (
            ("m_max", self.m_max, self.m_max_ci),
            ("i50_ma", self.i50, self.i50_ci),
            ("k_ma", self.k, self.k_ci),
            ("slope_per_ma", self.slope, self.slope_ci),
            ("threshold_ma", self.threshold, self.threshold_ci),
        ):
            out[key] = _json_float(v)
            out[f"{key}_ci"] = _json_ci(ci)
        out.update(
            threshold_fraction=self.threshold_fraction,
            confidence=self.confidence,
            ci_method=self.ci_method,
            n_boot=self.n_boot,
            r2=_json_float(self.r2),
            rmse=_json_float(self.rmse),
            n=self.n,
            n_levels=self.n_levels,
            model="m_max / (1 + exp((i50 - I) / k))",
            notes=list(self.notes),
        )
        return out


@dataclass(frozen=True)
class HReflexFit:
    """The two-sigmoid H-reflex curve fitted by :func:`fit_h_reflex` (intensities in mA).

    ``h_max_fit`` is the curve's maximum over the tested intensities and ``i_h_max`` where it is; ``a`` is
    the scale (above ``h_max_fit`` when the sigmoids overlap).
    """

    a: float
    i_rise: float
    k_rise: float
    i_fall: float
    k_fall: float
    h_max_fit: float
    i_h_max: float
    r2: float
    rmse: float

    def predict(self, intensity: np.ndarray | float) -> np.ndarray:
        """The fitted curve at ``intensity`` (mA)."""
        return two_sigmoids(intensity, self.a, self.i_rise, self.k_rise, self.i_fall, self.k_fall)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready values (NaN becomes None)."""
        return {
            "model": "a / (1 + exp((i_rise - I)/k_rise)) / (1 + exp((I - i_fall)/k_fall))",
            "a": _json_float(self.a),
            "i_rise_ma": _json_float(self.i_rise),
            "k_rise_ma": _json_float(self.k_rise),
            "i_fall_ma": _json_float(self.i_fall),
            "k_fall_ma": _json_float(self.k_fall),
            "h_max_fit": _json_float(self.h_max_fit),
            "i_h_max_ma": _json_float(self.i_h_max),
            "r2": _json_float(self.r2),
            "rmse": _json_float(self.rmse),
        }


@dataclass(frozen=True)
class HReflexSummary:
    """The H-reflex from the per-intensity means of the H peak-to-peak (:func:`summarize_h_reflex`).

    ``h_max``: the largest mean (response unit); ``h_max_intensity``: its intensity (mA);
    ``h_max_over_m_max``: ``h_max / m_max`` (NaN without a positive ``m_max``); ``fit``: the two-sigmoid fit,
    or None (``note`` says why).
    """

    h_max: float
    h_max_intensity: float
    h_max_over_m_max: float
    fit: HReflexFit | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready values (NaN becomes None)."""
        return {
            "h_max": _json_float(self.h_max),
            "h_max_intensity_ma": _json_float(self.h_max_intensity),
            "h_max_over_m_max": _json_float(self.h_max_over_m_max),
            "fit": None if self.fit is None else self.fit.as_dict(),
            "note": self.note,
        }


# ------------------------------------------------------------------------------------ input checks


def _as_points(intensity: Any, response: Any, what: str = "response") -> tuple[np.ndarray, np.ndarray]:
    try:
        x = np.asarray(intensity, dtype=np.float64).reshape(-1)
        y = np.asarray(response, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"intensities and {what}s must be numbers ({exc})") from None
    if x.shape != y.shape:
        raise ConfigError(f"{x.size} intensities for {y.size} {what}s: give one intensity per {what}")
    bad = ~(np.isfinite(x) & np.isfinite(y))
    if bad.any():
        raise ConfigError(f"{int(bad.sum())} of {x.size} points have a NaN or infinite intensity or {what}")
    return x, y


def _levels(intensity: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct intensities (rounded to 1e-6 mA), the level index of every point, and points per level."""
    levels, inv, counts = np.unique(np.round(intensity, _LEVEL_DECIMALS), return_inverse=True, return_counts=True)
    return levels, inv.reshape(-1), counts


def _level_means(values: np.ndarray, inv: np.ndarray, counts: np.ndarray) -> np.ndarray:
    return np.bincount(inv, weights=values, minlength=counts.size) / counts


def _t_quantile(confidence: float, dof: int) -> float:
    return float(stats.t.ppf(0.5 + confidence / 2.0, max(dof, 1)))


def _check_rise(x: np.ndarray, y: np.ndarray) -> None:
    if np.ptp(y) == 0.0:
        raise ConfigError(f"the responses are all equal ({y[0]:g}): no recruitment curve to fit")
    res = stats.spearmanr(x, y, alternative="greater")
    if not (res.statistic > 0 and res.pvalue < 0.05):
        raise ConfigError(
            f"the responses do not rise with intensity (Spearman rho = {res.statistic:.2f}, one-sided "
            f"p = {res.pvalue:.2g}): no recruitment curve to fit"
        )


# -------------------------------------------------------------------------------------- M fitting


def _initial_guesses(levels: np.ndarray, means: np.ndarray) -> list[np.ndarray]:
    """Starting points ``(m_max, i50, k)`` from the per-level means: plateau, half-way crossing, 10-90 % rise."""
    top = max(float(np.max(means)), 1e-12)
    span = float(levels[-1] - levels[0])
    run = np.maximum.accumulate(means)  # monotone envelope of the means

    def crossing(f: float) -> float:
        j = int(np.argmax(run >= f * top))
        if j == 0:
            return float(levels[0])
        lo, hi = run[j - 1], run[j]
        w = 0.0 if hi == lo else (f * top - lo) / (hi - lo)
        return float(levels[j - 1] + w * (levels[j] - levels[j - 1]))

    i50 = crossing(0.5)
    k0 = max((crossing(0.9) - crossing(0.1)) / (2.0 * math.log(9.0)), float(np.min(np.diff(levels))) / 4.0)
    k0 = min(k0, span)
    return [np.array([top, i50, k0 * f]) for f in (1.0, 0.3, 3.0)]


def _bounds(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    span = float(np.ptp(x))
    ymax = float(np.max(np.abs(y)))
    lo = np.array([ymax * 1e-9, x.min() - span, span * 1e-4])
    hi = np.array([ymax * 10.0, x.max() + span, span * 2.0])
    return lo, hi


def _least_squares(
    x: np.ndarray, y: np.ndarray, starts: Sequence[np.ndarray], lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The best of the curve_fit runs from ``starts``: parameters and covariance; raises ConfigError."""
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    problem = ""
    for p0 in starts:
        p0 = np.clip(p0, lo + 1e-12 * (hi - lo), hi - 1e-12 * (hi - lo))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optimize.OptimizeWarning)
                warnings.simplefilter("ignore", RuntimeWarning)
                p, c = optimize.curve_fit(
                    boltzmann,
                    x,
                    y,
                    p0=p0,
                    bounds=(lo, hi),
                    jac=lambda xx, *q: _boltzmann_jac(xx, *q),
                    method="trf",
                    max_nfev=2000,
                )
        except (RuntimeError, ValueError, np.linalg.LinAlgError) as exc:
            problem = " ".join(str(exc).split())
            continue
        sse = float(np.sum((y - boltzmann(x, *p)) ** 2))
        if np.all(np.isfinite(p)) and (best is None or sse < best[0]):
            best = (sse, p, c)
    if best is None:
        raise ConfigError(f"the Boltzmann fit did not converge ({problem or 'no finite solution'})")
    return best[1], best[2]


def _derived(p: np.ndarray, fraction: float) -> np.ndarray:
    """``(..., 5)``: m_max, i50, k, slope, threshold from ``(..., 3)`` parameters."""
    m, i50, k = p[..., 0], p[..., 1], p[..., 2]
    return np.stack([m, i50, k, m / (4.0 * k), i50 - k * math.log(1.0 / fraction - 1.0)], axis=-1)


def _delta_cis(p: np.ndarray, cov: np.ndarray, fraction: float, tq: float) -> np.ndarray:
    """``(5, 2)`` delta-method intervals of :func:`_derived` (log scale for m_max, k, slope)."""
    m, _, k = p
    grads = np.array(
        [
            [1.0, 0.0, 0.0],
            [0.0, 1.0, 0.0],
            [0.0, 0.0, 1.0],
            [1.0 / (4.0 * k), 0.0, -m / (4.0 * k * k)],
            [0.0, 1.0, -math.log(1.0 / fraction - 1.0)],
        ]
    )
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        se = np.sqrt(np.einsum("qi,ij,qj->q", grads, cov, grads))
        est = _derived(p, fraction)
        out = np.column_stack([est - tq * se, est + tq * se])
        logged = [0, 2, 3]
        f = np.exp(tq * se[logged] / est[logged])
        out[logged] = np.column_stack([est[logged] / f, est[logged] * f])
    out[~np.isfinite(se)] = np.nan
    return out


def _bootstrap_sets(
    inv: np.ndarray, counts: np.ndarray, n_boot: int, rng: np.random.Generator
) -> tuple[np.ndarray, bool]:
    """``(n_boot, n)`` indices resampling the points within their levels; False when a level has one point."""
    if counts.min() < 2:
        return rng.integers(0, inv.size, size=(n_boot, inv.size)), False
    order = np.argsort(inv, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pick = starts[inv] + np.floor(rng.random((n_boot, inv.size)) * counts[inv]).astype(np.intp)
    return order[pick], True


def _bootstrap_cis(
    x: np.ndarray,
    y: np.ndarray,
    p: np.ndarray,
    inv: np.ndarray,
    counts: np.ndarray,
    opts: tuple[int, float, float, int | None],
) -> tuple[np.ndarray, str, int]:
    n_boot, fraction, confidence, seed = opts
    rng = np.random.default_rng(seed)
    idx, by_sweeps = _bootstrap_sets(inv, counts, n_boot, rng)  # (n_boot, n) indices of the sweeps
    if by_sweeps:  # same intensities; each level's resampled deviations from its mean scaled by sqrt(n/(n-1))
        mean = _level_means(y, inv, counts)[inv]
        xs, ys = np.broadcast_to(x, idx.shape), mean + np.sqrt(counts / (counts - 1.0))[inv] * (y[idx] - mean)
    else:
        xs, ys = x[idx], y[idx]
    lo, hi = _bounds(x, y)
    est = []
    for ib, xb, yb in zip(idx, xs, ys, strict=True):  # one least-squares fit per bootstrap set
        if np.unique(inv[ib]).size < 4:
            continue
        try:
            pb, _ = _least_squares(xb, yb, [p], lo, hi)
        except ConfigError:
            continue
        est.append(pb)
    if len(est) < max(10, n_boot // 2):
        raise ConfigError(f"the bootstrap failed: only {len(est)} of {n_boot} refits converged")
    q = np.quantile(_derived(np.array(est), fraction), [0.5 - confidence / 2, 0.5 + confidence / 2], axis=0)
    return q.T, ("bootstrap-sweeps" if by_sweeps else "bootstrap-pairs"), len(est)


def _fit_notes(x: np.ndarray, p: np.ndarray, lo: np.ndarray, hi: np.ndarray, cov: np.ndarray) -> list[str]:
    notes = []
    names = ("m_max", "i50", "k")
    tol = 1e-6 * (hi - lo)
    for j in range(3):
        if p[j] <= lo[j] + tol[j] or p[j] >= hi[j] - tol[j]:
            notes.append(f"{names[j]} is at its bound ({p[j]:.4g}): its interval is not meaningful")
    frac_top = float(special.expit((x.max() - p[1]) / p[2]))
    if frac_top < 0.9:
        notes.append(
            f"the curve reaches only {100 * frac_top:.0f} % of m_max at the highest intensity: m_max is extrapolated"
        )
    frac_bottom = float(special.expit((x.min() - p[1]) / p[2]))
    if frac_bottom > 0.1:
        notes.append(f"the curve is already at {100 * frac_bottom:.0f} % of m_max at the lowest intensity")
    if not np.all(np.isfinite(cov)):
        notes.append("the covariance of the fit could not be estimated: no delta-method intervals")
    return notes


def _unresolved_rise(levels: np.ndarray, p: np.ndarray) -> tuple[float, float] | None:
    """The two adjacent intensities the fitted curve rises between (5 % to 95 %), if no intensity is on the rise."""
    frac = special.expit((levels - p[1]) / p[2])
    if np.any((frac > 0.05) & (frac < 0.95)) or not (frac[0] <= 0.05 and frac[-1] >= 0.95):
        return None
    j = int(np.argmax(frac >= 0.95))
    return float(levels[j - 1]), float(levels[j])


def _gap_intervals(
    ci: list[tuple[float, float]], gap: tuple[float, float], est: np.ndarray
) -> list[tuple[float, float]]:
    """Intervals when the whole rise falls between two intensities (the delta method's are meaningless then):
    I50 and the threshold anywhere in the gap, ``k`` from 0 to the largest that still rises from 5 % to 95 %
    within it, the slope from its counterpart."""
    a, b = gap
    k_most = (b - a) / (2.0 * math.log(19.0))
    out = list(ci)
    out[1] = out[4] = (a, b)
    out[2] = (0.0, k_most)
    out[3] = (float(est[0] / (4.0 * k_most)), math.inf)
    return out


def fit_recruitment(
    intensity: Any,
    response: Any,
    *,
    threshold_fraction: float = 0.1,
    confidence: float = 0.95,
    n_boot: int = 0,
    seed: int | None = 0,
) -> RecruitmentFit:
    """Fit the Boltzmann recruitment curve ``M(I) = m_max / (1 + exp((i50 - I) / k))``.

    Least squares (``scipy.optimize.curve_fit``, trust-region reflective, analytic Jacobian) from three
    starting points derived from the per-intensity means (plateau: largest mean; ``i50``: where the running
    maximum of the means crosses half of it; ``k``: from its 10-90 % rise, and that times 0.3 and 3), within
    bounds ``0 < m_max <= 10 max|response|``, ``i50`` within the tested range widened by its width on
    each side, ``1e-4 span <= k <= 2 span`` (``span``: highest minus lowest intensity).

    Parameters
    ----------
    intensity:
        ``(n,)`` stimulus intensity of every sweep (mA).
    response:
        ``(n,)`` response size of every sweep (e.g. M-wave peak-to-peak in uV).
    threshold_fraction:
        Fraction of ``m_max`` that defines the threshold intensity, ``0 < f < 1``.
    confidence:
        Level of the confidence intervals, ``0 < confidence < 1``.
    n_boot:
        0: delta-method intervals; else the number of bootstrap refits (at least 20) for percentile
        intervals (see the module docstring).
    seed:
        Seed of the bootstrap's random numbers.

    Raises
    ------
    ConfigError
        Fewer than 4 distinct intensities, NaN/inf values, responses that do not rise with intensity, a fit
        that does not converge, invalid settings.
    """
    if not 0.0 < threshold_fraction < 1.0:
        raise ConfigError(f"threshold_fraction = {threshold_fraction!r}: must be between 0 and 1 (exclusive)")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence = {confidence!r}: must be between 0 and 1 (exclusive)")
    if n_boot != 0 and not (isinstance(n_boot, int) and n_boot >= 20):
        raise ConfigError(f"n_boot = {n_boot!r}: 0 (delta method) or at least 20 bootstrap refits")
    x, y = _as_points(intensity, response)
    levels, inv, counts = _levels(x)
    if levels.size < 4:
        raise ConfigError(f"need at least 4 distinct intensities, got {levels.size}")
    _check_rise(x, y)
    lo, hi = _bounds(x, y)
    p, cov = _least_squares(x, y, _initial_guesses(levels, _level_means(y, inv, counts)), lo, hi)
    cov = np.asarray(cov, dtype=np.float64)
    n = x.size
    resid = y - boltzmann(x, *p)
    sst = float(np.sum((y - y.mean()) ** 2))
    notes = _fit_notes(x, p, lo, hi, cov)
    if n_boot:
        cis, method, n_ok = _bootstrap_cis(x, y, p, inv, counts, (n_boot, threshold_fraction, confidence, seed))
    else:
        cis, method, n_ok = _delta_cis(p, cov, threshold_fraction, _t_quantile(confidence, n - 3)), "delta", 0
    est = _derived(p, threshold_fraction)
    ci = [(float(a), float(b)) for a, b in cis]
    gap = _unresolved_rise(levels, p)
    if gap is not None:
        ci = _gap_intervals(ci, gap, est)
        notes.append(
            f"the curve rises from under 5 % to over 95 % of m_max between {gap[0]:g} and {gap[1]:g} mA, with no "
            "intensity in between: k is not determined (interval: every k that fits), the slope has no upper "
            "limit, and I50 and the threshold lie anywhere in that gap"
        )
    elif not (ci[2][0] > 0 and ci[2][1] / ci[2][0] < 100.0):  # also true for NaN
        notes.append(
            f"k is not determined by the data (interval {ci[2][0]:.3g}..{ci[2][1]:.3g} mA): the responses may "
            "not follow a sigmoid"
        )
    return RecruitmentFit(
        m_max=float(est[0]),
        i50=float(est[1]),
        k=float(est[2]),
        slope=float(est[3]),
        threshold=float(est[4]),
        m_max_ci=ci[0],
        i50_ci=ci[1],
        k_ci=ci[2],
        slope_ci=ci[3],
        threshold_ci=ci[4],
        threshold_fraction=float(threshold_fraction),
        confidence=float(confidence),
        ci_method=method,
        n_boot=n_ok,
        r2=1.0 - float(np.sum(resid**2)) / sst,
        rmse=float(np.sqrt(np.mean(resid**2))),
        n=n,
        n_levels=int(levels.size),
        covariance=cov,
        notes=tuple(notes),
    )


# -------------------------------------------------------------------------------------- H-reflex


def fit_h_reflex(intensity: Any, response: Any) -> HReflexFit:
    """Fit :func:`two_sigmoids` to H-reflex sizes (least squares, bounded, three starting points).

    The falling intensity is parameterised as ``i_fall = i_rise + d`` with ``d >= 0``; ``a`` is within
    ``(0, 3 max]``, ``i_rise`` within the tested range widened by its width on each side, the ``k`` within
    ``1e-3 span .. span``. ``h_max_fit`` is the curve's maximum over the tested intensities.

    Raises
    ------
    ConfigError
        Fewer than 6 distinct intensities, NaN/inf values, a fit that does not converge.
    """
    x, y = _as_points(intensity, response)
    levels, inv, counts = _levels(x)
    if levels.size < 6:
        raise ConfigError(f"the H-reflex fit needs at least 6 distinct intensities, got {levels.size}")
    means = _level_means(y, inv, counts)
    span = float(levels[-1] - levels[0])
    j = int(np.argmax(means))
    top = max(float(means[j]), 1e-12)

    def model(xx: np.ndarray, a: float, i_rise: float, k_rise: float, d: float, k_fall: float) -> np.ndarray:
        return two_sigmoids(xx, a, i_rise, k_rise, i_rise + d, k_fall)

    lo = np.array([top * 1e-6, levels[0] - span, span * 1e-3, 0.0, span * 1e-3])
    hi = np.array([3.0 * max(top, float(y.max())), levels[-1] + span, span, 3.0 * span, span])
    i_up = 0.5 * (levels[0] + levels[j])
    i_down = 0.5 * (levels[j] + levels[-1])
    starts = [np.array([top, i_up, s * span, i_down - i_up, s * span]) for s in (0.1, 0.05, 0.2)]
    best: tuple[float, np.ndarray] | None = None
    problem = "no finite solution"
    for p0 in starts:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optimize.OptimizeWarning)
                warnings.simplefilter("ignore", RuntimeWarning)
                p, _ = optimize.curve_fit(model, x, y, p0=np.clip(p0, lo, hi), bounds=(lo, hi), max_nfev=4000)
        except (RuntimeError, ValueError) as exc:
            problem = " ".join(str(exc).split())
            continue
        sse = float(np.sum((y - model(x, *p)) ** 2))
        if best is None or sse < best[0]:
            best = (sse, p)
    if best is None:
        raise ConfigError(f"the H-reflex fit did not converge ({problem})")
    sse, p = best
    grid = np.linspace(levels[0], levels[-1], 2001)
    curve = model(grid, *p)
    g = int(np.argmax(curve))
    return HReflexFit(
        a=float(p[0]),
        i_rise=float(p[1]),
        k_rise=float(p[2]),
        i_fall=float(p[1] + p[3]),
        k_fall=float(p[4]),
        h_max_fit=float(curve[g]),
        i_h_max=float(grid[g]),
        r2=1.0 - sse / float(np.sum((y - y.mean()) ** 2)),
        rmse=math.sqrt(sse / y.size),
    )


def summarize_h_reflex(intensity: Any, h_response: Any, m_max: float, *, fit: bool = True) -> HReflexSummary:
    """``h_max`` (largest per-intensity mean), its intensity (mA), ``h_max / m_max`` and, if ``fit``, the
    :func:`fit_h_reflex` curve (None, with the reason in ``note``, when it cannot be fitted)."""
    x, y = _as_points(intensity, h_response, "H-reflex size")
    levels, inv, counts = _levels(x)
    means = _level_means(y, inv, counts)
    j = int(np.argmax(means))
    ratio = float(means[j] / m_max) if m_max > 0 else math.nan
    h_fit, note = None, ""
    if fit:
        try:
            h_fit = fit_h_reflex(x, y)
        except ConfigError as exc:
            note = str(exc)
    return HReflexSummary(float(means[j]), float(levels[j]), ratio, h_fit, note)


def level_summary(intensity: Any, m_ptp: Any, h_ptp: Any | None = None) -> list[dict[str, Any]]:
    """One dict per distinct intensity: ``intensity_ma``, ``n``, ``m_mean``, ``m_sd`` (and ``h_mean``,
    ``h_sd`` when ``h_ptp`` is given); standard deviations with ``n - 1`` (NaN -> None for one sweep)."""
    x, m = _as_points(intensity, m_ptp)
    levels, inv, counts = _levels(x)
    cols = {"m": m}
    if h_ptp is not None:
        cols["h"] = _as_points(x, h_ptp, "H-reflex size")[1]
    stats_: dict[str, np.ndarray] = {}
    for name, v in cols.items():
        mean = _level_means(v, inv, counts)
        ss = np.bincount(inv, weights=(v - mean[inv]) ** 2, minlength=counts.size)
        with np.errstate(invalid="ignore", divide="ignore"):
            stats_[f"{name}_mean"], stats_[f"{name}_sd"] = mean, np.sqrt(ss / (counts - 1))
    return [
        {"intensity_ma": float(lv), "n": int(c), **{k: _json_float(float(v[i])) for k, v in stats_.items()}}
        for i, (lv, c) in enumerate(zip(levels, counts, strict=True))
    ]


# ---------------------------------------------------------------------------------------- sweeps


@dataclass(frozen=True, eq=False)
class Sweeps:
    """Evoked-response sweeps on a common time axis.

    Attributes
    ----------
    time_ms:
        ``(n_samples,)`` increasing time of the samples, in **milliseconds from the stimulus**.
    waveforms:
        ``(n_sweeps, n_samples)`` the responses, in ``unit``.
    intensity_ma:
        ``(n_sweeps,)`` the stimulus intensity of each sweep (mA).
    unit:
        Unit of ``waveforms``: ``"uV"`` for recordings; for waveform tables, whose files state none,
        ``"table units"``.
    source:
        The file the sweeps come from.
    channel:
        The channel (recordings), else None.
    notes:
        What was dropped or adjusted on the way (pulses too close to the recording's ends, a clipped epoch).
    """

    time_ms: np.ndarray
    waveforms: np.ndarray
    intensity_ma: np.ndarray
    unit: str
    source: str
    channel: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def n_sweeps(self) -> int:
        """Number of sweeps."""
        return int(self.waveforms.shape[0])


def _table_fail(path: str | PathLike[str], problem: str) -> FileFormatError:
    return FileFormatError(f"{path}: {problem}")


def _table_rows(path: Path) -> list[list[str]]:
    if not path.exists():
        raise _table_fail(path, "no such file")
    if path.is_dir():
        raise _table_fail(path, "is a directory, not a waveform table")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [[c.strip() for c in row] for row in csv.reader(f) if any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise _table_fail(path, f"cannot read the file ({type(exc).__name__}: {' '.join(str(exc).split())})") from exc
    if not rows:
        raise _table_fail(path, "the file is empty")
    widths = np.array([len(r) for r in rows])
    if np.any(widths != widths[0]):
        r = int(np.argmax(widths != widths[0]))
        raise _table_fail(path, f"ragged table: row {r + 1} has {widths[r]} values, row 1 has {widths[0]}")
    return rows


def read_waveform_table(path: str | PathLike[str]) -> Sweeps:
    """Read a waveform table (the format of RecruitmentCurveFitting's ``example-waveforms.csv``).

    Comma-separated numbers: row 1 holds the stimulus intensity of each sweep (mA; its first value is
    unused); column 1 (below row 1) the time of each sample in **milliseconds** from the stimulus,
    increasing; every further column one sweep. The file states no unit for the responses
    (``unit == "table units"``).

    Raises
    ------
    FileFormatError
        Missing, empty, ragged, non-numeric or non-finite values, no sweeps, fewer than 2 samples, or a time
        column that does not increase; the one-line message names the file and the problem.
    """
    p = Path(path)
    rows = _table_rows(p)
    try:
        table = np.array(rows, dtype=np.float64)
    except ValueError:
        r, c = next((i, j) for i, row in enumerate(rows) for j, v in enumerate(row) if not _is_number(v))
        raise _table_fail(p, f"row {r + 1}, column {c + 1}: {rows[r][c][:40]!r} is not a number") from None
    if table.shape[1] < 2:
        raise _table_fail(p, "no sweeps: the table has only one column (the time)")
    if table.shape[0] < 3:
        raise _table_fail(p, f"{table.shape[0] - 1} samples per sweep: need at least 2 rows of samples below row 1")
    nonfinite = ~np.isfinite(table)
    nonfinite[0, 0] = False  # the unused corner
    if nonfinite.any():
        r, c = np.argwhere(nonfinite)[0]
        raise _table_fail(p, f"row {r + 1}, column {c + 1}: {table[r, c]} (values must be finite)")
    t = table[1:, 0]
    step = np.diff(t)
    if np.any(step <= 0):
        j = int(np.argmax(step <= 0))
        raise _table_fail(
            p, f"the time (column 1) does not increase: row {j + 3} is {t[j + 1]:g} ms after {t[j]:g} ms in row {j + 2}"
        )
    return Sweeps(
        time_ms=t.copy(),
        waveforms=np.ascontiguousarray(table[1:, 1:].T),
        intensity_ma=table[0, 1:].copy(),
        unit="table units",
        source=str(p),
    )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _pulse_samples(info: Any) -> np.ndarray:
    """Sample index of every pulse: its nearest sample (XDF: on the recorded timestamps)."""
    if info.timestamps is not None:
        rel = info.timestamps - info.timestamps[0]
        return np.searchsorted(rel, info.pulse_times_s - 0.5 / info.rate_hz)
    return np.round(info.pulse_times_s * info.rate_hz).astype(np.intp)


def sweeps_from_recording(
    path: str | PathLike[str],
    channel: str | None = None,
    window_ms: tuple[float, float] = DEFAULT_EPOCH_MS,
    *,
    stream: str | None = None,
) -> Sweeps:
    """Epochs of a recording around its stimulation pulses, in microvolts, with the amplitude of each pulse.

    The recording is opened with :func:`acquisition.files.open_recording`; its pulses must carry amplitudes
    (``RecordingInfo.pulse_amplitudes_ma``: closedloop's ``session.xdf`` records them in its ``Pulses``
    stream). Each epoch spans ``window_ms`` (ms relative to the pulse, which is put on its nearest sample).
    When pulses come closer together than the window's end, the end is clipped to the shortest interval
    between pulses so no epoch holds the next stimulus (noted in ``notes``); pulses whose epoch extends
    beyond the recording, and pulses without a finite amplitude, are dropped (noted).

    Parameters
    ----------
    path:
        Any recording :func:`~acquisition.files.open_recording` reads.
    channel:
        The EMG channel; may be omitted when the recording has one.
    window_ms:
        ``(start, end)`` of the epochs in ms from the pulse, ``start < end``; default ``(-5, 60)``.
    stream:
        XDF: the EMG stream's name or type, when not the default.

    Raises
    ------
    FileFormatError
        The file cannot be read, has no pulses, no amplitudes, or no complete epoch.
    ConfigError
        Several channels and none chosen; an invalid window.
    """
    start_ms, end_ms = (float(v) for v in window_ms)
    if not (math.isfinite(start_ms) and math.isfinite(end_ms) and start_ms < end_ms and end_ms > 0):
        raise ConfigError(f"window_ms = {tuple(window_ms)!r}: need start < end (ms from the pulse), end > 0")
    with open_recording(path, channels=None if channel is None else [channel], stream=stream) as rec:
        info = rec.info
        if info.n_channels > 1:
            raise ConfigError(
                f"{path}: {info.n_channels} EMG channels ({', '.join(info.channel_names)}): choose one with --channel"
            )
        if info.pulse_times_s.size == 0:
            raise FileFormatError(
                f"{path}: no stimulation pulses in the recording: recruitment needs the time and the intensity "
                "of each pulse"
            )
        if info.pulse_amplitudes_ma is None:
            raise FileFormatError(
                f"{path}: the pulses ({info.pulse_source}) carry no amplitudes: recruitment needs the intensity "
                "of each pulse (closedloop's session.xdf records it in its Pulses stream)"
            )
        x = rec.read(0, info.n_samples)[:, 0] * 1e6
    return _epochs(x, info, start_ms, end_ms, str(path))


def _epochs(x: np.ndarray, info: Any, start_ms: float, end_ms: float, source: str) -> Sweeps:
    notes = []
    amps = np.asarray(info.pulse_amplitudes_ma, dtype=np.float64)
    times = np.asarray(info.pulse_times_s, dtype=np.float64)
    gaps_ms = np.diff(times) * 1e3
    if gaps_ms.size and gaps_ms.min() < end_ms:
        end_ms = float(gaps_ms.min())
        notes.append(f"epochs end at {end_ms:.1f} ms, the shortest interval between pulses")
    rate = info.rate_hz
    off = np.arange(math.ceil(start_ms * rate / 1e3), math.floor(end_ms * rate / 1e3) + 1)
    k0 = _pulse_samples(info)
    ok = np.isfinite(amps) & (k0 + off[0] >= 0) & (k0 + off[-1] < x.size)
    if (~np.isfinite(amps)).any():
        notes.append(f"{int((~np.isfinite(amps)).sum())} pulses without a finite amplitude dropped")
    cut = int((np.isfinite(amps) & ~ok).sum())
    if cut:
        notes.append(f"{cut} pulses too close to the ends of the recording for a whole epoch dropped")
    if not ok.any():
        raise FileFormatError(f"{source}: none of the {amps.size} pulses has a complete epoch in the recording")
    return Sweeps(
        time_ms=off * (1e3 / rate),
        waveforms=x[k0[ok, None] + off[None, :]],
        intensity_ma=amps[ok],
        unit="uV",
        source=source,
        channel=info.channel_names[0],
        notes=tuple(notes),
    )


# -------------------------------------------------------------------------------- measurement


def _window_mask(time_ms: np.ndarray, window_ms: tuple[float, float], name: str) -> np.ndarray:
    a, b = (float(v) for v in window_ms)
    if not (math.isfinite(a) and math.isfinite(b) and a < b):
        raise ConfigError(f"{name} window {a:g}..{b:g} ms: need start < end")
    mask = (time_ms >= a) & (time_ms <= b)
    if mask.sum() < 2:
        raise ConfigError(
            f"{name} window {a:g}..{b:g} ms holds {int(mask.sum())} samples; the sweeps span "
            f"{time_ms[0]:g}..{time_ms[-1]:g} ms"
        )
    return mask


def peak_to_peak(
    time_ms: np.ndarray, waveforms: np.ndarray, window_ms: tuple[float, float], name: str = "response"
) -> np.ndarray:
    """``(n_sweeps,)`` max - min of each sweep over ``window_ms[0] <= t <= window_ms[1]`` (t in ms).

    Raises ConfigError for a window with fewer than 2 samples.
    """
    seg = np.asarray(waveforms, dtype=np.float64)[:, _window_mask(np.asarray(time_ms), window_ms, name)]
    return seg.max(axis=1) - seg.min(axis=1)


@dataclass(frozen=True)
class ResponseWindows:
    """M and H windows (ms from the stimulus) used to measure the responses.

    ``h_ms`` is None when no H-reflex was found (``h_reason`` says why). ``*_auto``: found by
    :func:`find_windows` rather than given. ``blank_ms``: samples before this were never searched.
    """

    m_ms: tuple[float, float]
    h_ms: tuple[float, float] | None
    m_auto: bool
    h_auto: bool
    blank_ms: float
    h_reason: str = ""
    details: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready values."""
        return {
            "m_window_ms": list(self.m_ms),
            "m_window_auto": self.m_auto,
            "h_window_ms": None if self.h_ms is None else list(self.h_ms),
            "h_window_auto": self.h_auto,
            "h_reason": self.h_reason,
            "blank_ms": self.blank_ms,
            **{k: _json_float(v) for k, v in self.details.items()},
        }


def _blank_end(time_ms: np.ndarray, x: np.ndarray, blank_ms: float) -> float:
    """Searching starts at ``blank_ms`` or after the leading samples where every sweep is exactly 0."""
    nonzero = np.flatnonzero(np.any(x != 0.0, axis=0))
    zero_end = time_ms[nonzero[0]] if nonzero.size else time_ms[-1]
    return float(max(blank_ms, zero_end))


def _run_around(above: np.ndarray, p: int) -> tuple[int, int]:
    """First and last index of the run of True in ``above`` that contains ``p``."""
    below = np.flatnonzero(~above)
    left = below[below < p]
    right = below[below > p]
    return (int(left[-1]) + 1 if left.size else 0), (int(right[0]) - 1 if right.size else above.size - 1)


def _window_at(
    mean: np.ndarray, env: np.ndarray, search: np.ndarray, p: int, t: np.ndarray
) -> tuple[tuple[float, float], float]:
    """The window around the response at sample ``p`` (rule 5 of the module docstring) and the envelope's floor."""
    floor = float(np.percentile(env[search], _FLOOR_PERCENTILE))
    a, b = _run_around(search & (env > floor + _WINDOW_LEVEL * (env[p] - floor)), p)
    t_hi, t_lo = t[a + int(np.argmax(mean[a : b + 1]))], t[a + int(np.argmin(mean[a : b + 1]))]
    first, last = min(t_hi, t_lo), max(t_hi, t_lo)
    pad = max(_MIN_PAD_MS, last - first)
    allowed = t[search]
    return (float(max(first - pad, allowed[0])), float(min(last + pad, allowed[-1]))), floor


def find_windows(
    sweeps: Sweeps,
    *,
    m_window_ms: tuple[float, float] | None = None,
    h_window_ms: tuple[float, float] | None = None,
    blank_ms: float = DEFAULT_BLANK_MS,
) -> ResponseWindows:
    """The M and H windows: those given, the others found by the rule of the module docstring.

    Raises
    ------
    ConfigError
        A given window outside the sweeps; no M-wave standing out from the noise.
    """
    t = sweeps.time_ms
    x = sweeps.waveforms - np.median(sweeps.waveforms, axis=1, keepdims=True)
    blank = _blank_end(t, sweeps.waveforms, blank_ms)
    valid = t >= blank
    levels, inv, counts = _levels(sweeps.intensity_ma)
    dilate = max(1, round(_DILATE_MS / float(np.median(np.diff(t)))))
    means, env = _level_waves(x, inv, counts, dilate)
    # the 25th percentile of |x| is 0.3186 sigma for Gaussian noise, and barely moves when responses fill half
    sigma = float(np.percentile(np.abs(x[:, valid]), 25.0)) / 0.3186 if valid.any() else math.nan
    details: dict[str, float] = {"noise_sd": sigma}
    if m_window_ms is not None:
        _window_mask(t, m_window_ms, "M")
        m_ms, m_auto = (float(m_window_ms[0]), float(m_window_ms[1])), False
    else:
        top = inv >= levels.size - max(1, math.ceil(levels.size / 4))
        search = valid & ((t < h_window_ms[0]) if h_window_ms is not None else True)
        m_ms, m_auto = _find_m(t, x[top], search, dilate, blank), True
    if h_window_ms is not None:
        _window_mask(t, h_window_ms, "H")
        return ResponseWindows(m_ms, (float(h_window_ms[0]), float(h_window_ms[1])), m_auto, False, blank, "", details)
    h_ms, reason = _find_h(sweeps, (means, env), inv, counts, valid & (t > m_ms[1]), sigma)
    return ResponseWindows(m_ms, h_ms, m_auto, True, blank, reason, details)


def _level_waves(x: np.ndarray, inv: np.ndarray, counts: np.ndarray, dilate: int) -> tuple[np.ndarray, np.ndarray]:
    """``(n_levels, n_samples)`` mean waveform and envelope (RMS across the level's sweeps, dilated)."""
    total = np.zeros((counts.size, x.shape[1]))
    sq = np.zeros_like(total)
    np.add.at(total, inv, x)
    np.add.at(sq, inv, x**2)
    env = ndimage.maximum_filter1d(np.sqrt(sq / counts[:, None]), size=2 * dilate + 1, axis=1, mode="nearest")
    return total / counts[:, None], env


def _find_m(t: np.ndarray, x_top: np.ndarray, search: np.ndarray, dilate: int, blank: float) -> tuple[float, float]:
    if search.sum() < 3:
        raise ConfigError(f"the sweeps hold no samples to search for the M-wave after {blank:g} ms")
    mean, env = _level_waves(x_top, np.zeros(x_top.shape[0], dtype=np.intp), np.array([x_top.shape[0]]), dilate)
    p = int(np.flatnonzero(search)[np.argmax(env[0, search])])
    window, floor = _window_at(mean[0], env[0], search, p, t)
    if not env[0, p] > _M_MIN_SNR * floor:
        raise ConfigError(
            f"no evoked response stands out from the noise after {blank:g} ms at the highest intensities "
            f"(largest envelope {env[0, p]:.3g}, {env[0, p] / floor:.1f} x its floor): give the M window"
        )
    return window


def _find_h(
    sweeps: Sweeps,
    waves: tuple[np.ndarray, np.ndarray],
    inv: np.ndarray,
    counts: np.ndarray,
    search: np.ndarray,
    sigma: float,
) -> tuple[tuple[float, float] | None, str]:
    t = sweeps.time_ms
    means_w, env = waves
    n_levels = counts.size
    if search.sum() < 3:
        return None, "no samples after the M window"
    contrast = env.max(axis=0) - env[-1]
    p = int(np.flatnonzero(search)[np.argmax(contrast[search])])
    best = int(np.argmax(env[:, p]))
    if contrast[p] <= 0 or best in (0, n_levels - 1):
        return None, "no later response is largest at intermediate intensities"
    window, _ = _window_at(means_w[best], env[best], search, p, t)
    h = peak_to_peak(t, sweeps.waveforms, window, "H")
    means = _level_means(h, inv, counts)
    j = int(np.argmax(means))
    n_win = int(((t >= window[0]) & (t <= window[1])).sum())
    noise_ptp = 2.0 * sigma * math.sqrt(2.0 * math.log(max(n_win, 2)))
    where = f"the response at {window[0]:.1f}-{window[1]:.1f} ms"
    if j in (0, n_levels - 1):
        return None, f"{where} is largest at an end of the intensity range"
    if means[j] < _H_MIN_DECLINE * means[-1]:
        return None, (
            f"{where} does not decline at the highest intensity (largest mean {means[j]:.3g}, at the highest "
            f"intensity {means[-1]:.3g})"
        )
    if not means[j] >= _H_MIN_NOISE_RATIO * noise_ptp:
        return None, (
            f"{where} (largest mean {means[j]:.3g}) is within {_H_MIN_NOISE_RATIO:g} x the noise's peak-to-peak "
            f"({noise_ptp:.3g})"
        )
    return window, ""


# ------------------------------------------------------------------------------------------ plot


def plot_recruitment(
    fit: RecruitmentFit,
    intensity: Any,
    m_ptp: Any,
    path: str | PathLike[str],
    *,
    h_ptp: Any | None = None,
    h_summary: HReflexSummary | None = None,
    sweeps: Sweeps | None = None,
    windows: ResponseWindows | None = None,
    unit: str = "uV",
    title: str | None = None,
) -> Path:
    """Write the recruitment curve to a PNG (matplotlib, Agg; no display needed) and return its path.

    Right (or only) panel: the M-wave points, the fitted curve with its pointwise delta-method band, ``i50``
    and the threshold as vertical lines with their confidence intervals shaded, and the H-reflex points
    (and fitted curve, ``h_max``) if given. Left panel, when ``sweeps`` are given: every sweep coloured by
    intensity, with the blanked stretch and the M and H windows shaded (the vertical range fits the sweeps
    after the blanking; an artifact before may be cut off). ``title``: a title above the figure.
    """
    from matplotlib.figure import Figure

    x, m = _as_points(intensity, m_ptp)
    fig = Figure(figsize=(12.0, 5.0) if sweeps is not None else (7.0, 5.0), layout="constrained")
    axes = fig.subplots(1, 2 if sweeps is not None else 1, squeeze=False)[0]
    if sweeps is not None:
        _plot_sweeps(axes[0], sweeps, windows)
    ax = axes[-1]
    left = fit.threshold_ci[0] if math.isfinite(fit.threshold_ci[0]) else x.min()
    grid = np.linspace(min(x.min(), left), x.max(), 400)
    lo, hi = fit.band(grid)
    ax.fill_between(grid, lo, hi, color="C0", alpha=0.2, lw=0, label=f"{100 * fit.confidence:.0f} % band")
    ax.plot(grid, fit.predict(grid), color="C0", lw=2, label="Boltzmann fit")
    ax.plot(x, m, "o", color="C0", ms=5, mfc="none", label="M-wave (per sweep)")
    pct = 100 * fit.threshold_fraction
    for value, ci, color, label in (
        (fit.i50, fit.i50_ci, "C2", f"I50 = {fit.i50:.3g} mA"),
        (fit.threshold, fit.threshold_ci, "C3", f"threshold ({pct:.0f} %) = {fit.threshold:.3g} mA"),
    ):
        if all(math.isfinite(v) for v in ci):
            ax.axvspan(ci[0], ci[1], color=color, alpha=0.15, lw=0)
        ax.axvline(value, color=color, ls="--", lw=1.2, label=label)
    if h_ptp is not None:
        h = _as_points(x, h_ptp, "H-reflex size")[1]
        ax.plot(x, h, "s", color="C1", ms=4, mfc="none", label="H-reflex (per sweep)")
        if h_summary is not None and h_summary.fit is not None:
            ax.plot(grid, h_summary.fit.predict(grid), color="C1", lw=1.5, label="H fit (two sigmoids)")
        if h_summary is not None:
            ax.plot(
                [h_summary.h_max_intensity],
                [h_summary.h_max],
                "*",
                color="C1",
                ms=14,
                mec="k",
                label=f"H max = {h_summary.h_max:.3g} at {h_summary.h_max_intensity:.3g} mA",
            )
    ax.set_xlabel("stimulus intensity (mA)")
    ax.set_ylabel(f"peak-to-peak response ({unit})")
    ax.set_title(
        f"M max {fit.m_max:.4g} {unit}, slope {fit.slope:.3g} {unit}/mA at I50\n"
        f"I50 {fit.i50:.3g} mA, threshold {fit.threshold:.3g} mA, R\u00b2 {fit.r2:.3f} ({fit.n} sweeps)",
        fontsize=10,
    )
    if title:
        fig.suptitle(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    out = Path(path)
    fig.savefig(out, dpi=110)
    return out


def _plot_sweeps(ax: Any, sweeps: Sweeps, windows: ResponseWindows | None) -> None:
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.collections import LineCollection
    from matplotlib.colors import Normalize

    norm = Normalize(float(sweeps.intensity_ma.min()), float(sweeps.intensity_ma.max()))
    cmap = colormaps["viridis"]
    segs = np.stack([np.broadcast_to(sweeps.time_ms, sweeps.waveforms.shape), sweeps.waveforms], axis=-1)
    ax.add_collection(LineCollection(segs, colors=cmap(norm(sweeps.intensity_ma)), linewidths=0.8, alpha=0.8))
    ax.set_xlim(sweeps.time_ms[0], sweeps.time_ms[-1])
    after = sweeps.waveforms[:, sweeps.time_ms >= (windows.blank_ms if windows is not None else -np.inf)]
    if after.size:
        lo, hi = float(after.min()), float(after.max())
        pad = 0.08 * (hi - lo) if hi > lo else 1.0
        ax.set_ylim(lo - pad, hi + pad)
    if windows is not None:
        ax.axvspan(max(0.0, sweeps.time_ms[0]), windows.blank_ms, color="0.5", alpha=0.25, lw=0, label="blanked")
        ax.axvspan(*windows.m_ms, color="C0", alpha=0.15, lw=0, label="M window")
        if windows.h_ms is not None:
            ax.axvspan(*windows.h_ms, color="C1", alpha=0.15, lw=0, label="H window")
        ax.legend(fontsize=8, loc="upper right")
    ax.figure.colorbar(ScalarMappable(norm, cmap), ax=ax, label="stimulus intensity (mA)")
    ax.set_xlabel("time from stimulus (ms)")
    ax.set_ylabel(f"response ({sweeps.unit})")
    ax.set_title(f"{sweeps.n_sweeps} sweeps" + (f", channel {sweeps.channel}" if sweeps.channel else ""), fontsize=10)
    ax.grid(alpha=0.3)
