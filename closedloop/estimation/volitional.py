"""Volitional EMG during stimulation: four ways to separate it from the evoked response.

Every stimulation pulse brings an artifact and an M-wave that are tens of times larger than the residual
voluntary EMG. Each method here takes one *pulse segment* of the band-passed EMG (from the pulse sample
to the end of its interval, ``(L, C)``, artifact already blanked) and returns the volitional RMS per
channel plus the residual signal it measured (for spectral analysis). All are vectorised over channels.

``post``
    RMS of the window after the M-wave (``post_start`` to the end). Simple and unbiased while that window
    exists; at high pulse rates (>= ~35 Hz) it shrinks to nothing.
``comb``
    Comb filter: subtract the previous pulse segment, aligned at the pulse, from the current one. The
    evoked response cancels if it is stable from pulse to pulse; the volitional parts are independent, so
    the difference has sqrt(1 + a^2) times their RMS. ``a`` is a per-channel gain fitted (least squares)
    on the M-wave window, so a pulse-to-pulse change in intensity (a closed-loop controller changes it
    every pulse) scales the subtracted response instead of leaving a residual M-wave (``comb_scale=False``
    gives the classic a = 1). Uses the whole segment after blanking: works at 50 Hz.
``gs``
    Gram-Schmidt prediction-error filter: the current segment is predicted from the previous ``history``
    segments with weights fitted by least squares (QR, i.e. Gram-Schmidt orthogonalisation) on the M-wave
    window; the prediction error over the whole segment, divided by sqrt(1 + |w|^2), is the volitional
    EMG. More regressors absorb more of the volitional signal itself: biased low at short segments.
``nlms``
    Adaptive prediction-error filter, block-normalised LMS over past segments: the prediction error uses
    the weights learnt *before* the current segment (a priori, so it cannot fit the current volitional
    EMG), then the weights take one NLMS step (``mu``) on the M-wave window.

Without a pulse the whole interval is volitional: its RMS, for every method. Calibration (MVC) intervals
have no pulses, so % MVC compares like with like up to the small bias of each method measured in
bench/estimators.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from closedloop.errors import ConfigError

__all__ = ["METHODS", "SegmentResult", "VolitionalEstimator"]

METHODS = ("post", "comb", "gs", "nlms")


@dataclass(frozen=True)
class SegmentResult:
    """Volitional estimate of one pulse segment.

    Attributes
    ----------
    effort:
        ``(C,)`` volitional RMS in the units of the input; NaN where undefined.
    residual:
        ``(L, C)`` the volitional signal as measured (zeros where ``valid`` is False).
    valid:
        ``(L,)`` samples of ``residual`` that carry volitional EMG.
    method:
        The method actually used (a method without enough history falls back to ``post``).
    lags, weights:
        For prediction methods, the distance in samples to each past segment used ``(M,)`` and the weights
        per channel ``(C, M)``: the residual is the volitional EMG filtered by
        ``H(f) = (1 - sum_j w_j exp(-2 pi i f lag_j / rate)) / sqrt(1 + |w|^2)``, which
        :meth:`response` evaluates so that spectra can be corrected. None for ``post`` and windows.
    """

    effort: np.ndarray
    residual: np.ndarray
    valid: np.ndarray
    method: str
    lags: np.ndarray | None = None
    weights: np.ndarray | None = None

    def response(self, freqs_hz: np.ndarray, rate_hz: float) -> np.ndarray | None:
        """``|H(f)|^2`` of the prediction-error filter, ``(n_freqs, C)``; None for unfiltered residuals."""
        if self.lags is None or self.weights is None:
            return None
        z = np.exp(-2j * np.pi * np.outer(freqs_hz, self.lags) / rate_hz)  # (F, M)
        h = 1.0 - z @ self.weights.T  # (F, C)
        return np.abs(h) ** 2 / (1.0 + np.sum(self.weights**2, axis=1))


def _rms(x: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean(x * x, axis=0))


class VolitionalEstimator:
    """Volitional EMG of pulse segments by one of :data:`METHODS`.

    Parameters
    ----------
    method:
        ``"post"``, ``"comb"``, ``"gs"`` or ``"nlms"``.
    n_channels:
        Channels.
    blank_n:
        Samples after the pulse that are artifact (excluded everywhere).
    mwave_n:
        ``(start, stop)`` samples after the pulse of the M-wave window (used to fit gains/weights).
    post_n:
        Samples after the pulse where the ``post`` window starts.
    min_n:
        Fewest volitional samples that give an estimate.
    history:
        Past segments used by ``gs`` and ``nlms``.
    mu:
        NLMS step size (0 < mu <= 1).
    comb_scale:
        Fit the comb filter's gain (True) or subtract the previous segment as is (False).
    """

    def __init__(
        self,
        method: str,
        n_channels: int,
        blank_n: int,
        mwave_n: tuple[int, int],
        post_n: int,
        min_n: int,
        history: int = 2,
        mu: float = 0.3,
        comb_scale: bool = True,
    ) -> None:
        if method not in METHODS:
            raise ConfigError(f"volitional method {method!r} not allowed; use one of {', '.join(METHODS)}")
        if history < 1:
            raise ConfigError(f"history = {history}: need at least 1 past segment")
        if not 0 < mu <= 1:
            raise ConfigError(f"nlms mu = {mu}: allowed 0 < mu <= 1")
        self.method = method
        self.n_channels = n_channels
        self.blank_n = blank_n
        self.mwave_n = mwave_n
        self.post_n = post_n
        self.min_n = max(3, min_n)
        self.history = 1 if method == "comb" else history
        self.mu = mu
        self.comb_scale = comb_scale
        self._past: list[tuple[int, np.ndarray]] = []  # (pulse sample index, segment), most recent last
        self._w = np.full((n_channels, history), 1.0 / history)

    def reset(self) -> None:
        """Forget past segments and adaptive weights."""
        self._past.clear()
        self._w[:] = 1.0 / self._w.shape[1]

    # -- no pulse ------------------------------------------------------------------------------------
    def window(self, y: np.ndarray) -> SegmentResult:
        """A stretch without a pulse: all of it is volitional."""
        valid = np.ones(y.shape[0], bool)
        effort = _rms(y) if y.shape[0] >= self.min_n else np.full(y.shape[1], np.nan)
        return SegmentResult(effort, y, valid, "window")

    # -- pulse segments ----------------------------------------------------------------------------
    def segment(self, y: np.ndarray, position: int = 0) -> SegmentResult:
        """Estimate the volitional EMG of a pulse segment ``y`` (``(L, C)``, sample 0 = the pulse).

        ``position`` is the pulse's sample index in the stream (for the spectral response of the
        prediction methods).
        """
        past = self._past
        method = self.method
        if method != "post" and not past:
            method = "post"
        if method == "post":
            res = self._post(y)
        else:
            use = past[-1:] if method == "comb" else past[::-1][: self.history]
            if method == "comb":
                use = use[::-1]
            res = self._predicted(y, [seg for _, seg in use], method, [position - pos for pos, _ in use])
        past.append((position, y))
        if len(past) > self.history:
            del past[0]
        return res

    def _post(self, y: np.ndarray) -> SegmentResult:
        L, C = y.shape
        valid = np.zeros(L, bool)
        valid[self.post_n :] = True
        resid = np.where(valid[:, None], y, 0.0)
        n = max(0, L - self.post_n)
        effort = _rms(y[self.post_n :]) if n >= self.min_n else np.full(C, np.nan)
        return SegmentResult(effort, resid, valid, "post")

    def _predicted(self, y: np.ndarray, past: list[np.ndarray], method: str, lags: list[int]) -> SegmentResult:
        """Prediction error of ``y`` from ``past`` segments (most recent first)."""
        L, C = y.shape
        n = min(L, *(p.shape[0] for p in past))
        b0 = self.blank_n
        if n - b0 < self.min_n:
            return self._post(y)
        m0, m1 = min(self.mwave_n[0], n), min(self.mwave_n[1], n)
        if m1 - m0 < 2:
            m0, m1 = b0, n
        P = [p[:n] for p in past]  # M arrays (n, C), most recent first
        cur = y[:n]
        M = len(P)
        yw = cur[m0:m1]
        if method == "comb":
            Pw = P[0][m0:m1]
            if self.comb_scale:
                den = np.einsum("lc,lc->c", Pw, Pw)
                a = np.einsum("lc,lc->c", Pw, yw) / np.where(den > 0, den, 1.0)
            else:
                a = np.ones(C)
            w = a[:, None]
            err = cur - P[0] * a
        elif method == "gs":
            X = np.stack(P, axis=-1)  # (n, C, M)
            Xw = X[m0:m1]
            G = np.einsum("lcm,lcn->cmn", Xw, Xw)
            G += np.eye(M) * (1e-9 * np.trace(G, axis1=1, axis2=2)[:, None, None] / M + 1e-300)
            w = np.linalg.solve(G, np.einsum("lcm,lc->cm", Xw, yw)[..., None])[..., 0]
            err = cur - np.einsum("lcm,cm->lc", X, w)
        else:  # nlms: a priori weights, then one normalised step on the M-wave window
            w = self._w[:, :M].copy()
            err = cur.copy()
            for j in range(M):
                err -= P[j] * w[:, j]
            e_w = err[m0:m1]
            Pw = [q[m0:m1] for q in P]
            norm = sum(np.einsum("lc,lc->c", q, q) for q in Pw)
            norm = np.where(norm > 0, norm, 1.0)
            for j in range(M):
                self._w[:, j] = w[:, j] + self.mu * np.einsum("lc,lc->c", Pw[j], e_w) / norm
        gain = np.sqrt(1.0 + np.sum(w * w, axis=1))
        resid = np.zeros_like(y)
        resid[b0:n] = err[b0:n] / gain
        valid = np.zeros(L, bool)
        valid[b0:n] = True
        return SegmentResult(_rms(resid[b0:n]), resid, valid, method, np.asarray(lags, dtype=float), w)
