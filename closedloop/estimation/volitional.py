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

:meth:`VolitionalEstimator.segments` takes many consecutive pulse segments of one channels-first array
at once (replays): the window products and gains of every segment are formed together, only the ``nlms``
weight recursion (a tiny ``(C, M)`` update per pulse) runs pulse by pulse.
:meth:`~VolitionalEstimator.segment_in_place` (and :meth:`~VolitionalEstimator.segment`) take one segment
(the live loop) with the same arithmetic per segment, so that both give the same numbers: a fit's window
products are summed in one order whatever else is in the batch (an ill-conditioned ``gs`` fit would
otherwise turn rounding differences into visible ones).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType

import numpy as np

from closedloop.errors import ConfigError

__all__ = ["METHODS", "SegmentBatch", "SegmentResult", "VolitionalEstimator"]

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


@dataclass(frozen=True)
class SegmentBatch:
    """What :meth:`VolitionalEstimator.segments` found in ``P`` consecutive pulse segments.

    Attributes
    ----------
    method:
        ``(P,)`` the method used per segment (``post`` where a prediction method lacked a usable past).
    lo, hi:
        ``(P,)`` sample indices (in the array given): segment ``k``'s volitional signal is
        ``y[:, lo[k]:hi[k]]`` after the call; its RMS is the effort (NaN if it is shorter than ``min_n``).
    n_past:
        ``(P,)`` past segments the prediction used (0 for ``post``).
    lags:
        ``(P, H)`` distance in samples to each of them, most recent first (0 beyond ``n_past``).
    weights:
        ``(P, C, H)`` prediction weights per channel (0 beyond ``n_past``); see :class:`SegmentResult`.
    """

    method: tuple[str, ...]
    lo: np.ndarray
    hi: np.ndarray
    n_past: np.ndarray
    lags: np.ndarray
    weights: np.ndarray


@dataclass
class SegmentPlan:
    """One pulse segment of an interval, from :meth:`VolitionalEstimator.plan`: ``[start, end)`` in the
    interval, its pulse at stream sample ``position``, ``m`` past segments to predict it from (0: ``post``),
    its volitional range ``[lo, hi)`` in the interval, the fit window ``(m0, m1)`` (samples after the pulse),
    the lags (samples) and ``(C, n)`` views of the past segments, the ``(C, m)`` weights (None until known)."""

    start: int
    end: int
    position: int
    m: int
    lo: int = 0
    hi: int = 0
    window: tuple[int, int] = (0, 0)
    lags: list[int] = field(default_factory=list)
    past: list[np.ndarray] = field(default_factory=list)
    w: np.ndarray | None = None
    norm: np.ndarray | None = None


def _rms(x: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean(x * x, axis=0))


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sum over the last axis of ``a * b``."""
    return np.einsum("...l,...l->...", a, b)


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
        ``(start, stop)`` samples after the pulse of the window gains/weights are fitted on (where the evoked
        response is: the M-wave window unless the estimator's configuration gives one apart).
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

    Attributes
    ----------
    kernels:
        Compiled kernels (:func:`closedloop.estimation.kernels.load`) for the window products and the prediction
        errors of a batch of segments (:meth:`segments`): the same numbers, read where the segments are instead of
        gathered. None (default): numpy.
    """

    kernels: ModuleType | None = None

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
        #: (pulse sample index, channels-first segment ``(C, L)``) of the last ``history`` pulses, most recent last
        self._past: list[tuple[int, np.ndarray]] = []
        self._w = np.full((n_channels, history), 1.0 / history)
        self._update: tuple[np.ndarray, list[np.ndarray]] | None = None  # nlms: the last segment's weight step

    def reset(self) -> None:
        """Forget past segments and adaptive weights."""
        self._update = None
        self._past.clear()
        self._w[:] = 1.0 / self._w.shape[1]

    def settle(self) -> None:
        """Take the ``nlms`` weight step that :meth:`segment_in_place` left for later (its segment's
        prediction used the weights from before it); every other call takes it first."""
        job, self._update = self._update, None
        if job is None:
            return
        cur, past = job  # (C, W) windows of the segment and of its m past segments
        m = len(past)
        gram, cross = _products(cur[:, None], [q[:, None] for q in past], np.ones((1, m), bool))
        trace = sum(gram[:, :, j, j] for j in range(m))
        w = self._w
        w[:, :m] = self._nlms(gram, cross, trace, w[:, :m].copy())[:, 0, :]

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
        prediction methods). The same computation as :meth:`segments` with one segment.
        """
        L, C = y.shape
        yt = np.array(y.T, dtype=np.float64, order="C")
        b = self.segments(yt, np.array([0]), np.array([L]), np.array([position]))
        lo, hi = int(b.lo[0]), int(b.hi[0])
        valid = np.zeros(L, bool)
        valid[lo:hi] = True
        resid = np.where(valid[:, None], yt.T, 0.0)
        effort = _rms(resid[lo:hi]) if hi - lo >= self.min_n else np.full(C, np.nan)
        m = int(b.n_past[0])
        if m == 0:
            return SegmentResult(effort, resid, valid, b.method[0])
        return SegmentResult(effort, resid, valid, b.method[0], b.lags[0, :m].astype(float), b.weights[0, :, :m].copy())

    def segments(self, y: np.ndarray, starts: np.ndarray, ends: np.ndarray, positions: np.ndarray) -> SegmentBatch:
        """Estimate consecutive pulse segments of a channels-first array, in place.

        Segment ``k`` is ``y[:, starts[k]:ends[k]]`` (sample 0 = its pulse, at stream sample ``positions[k]``);
        segments are in stream order, do not overlap, and no :meth:`reset` falls between them. Each one is
        predicted from the ones before it (and from the past kept from earlier calls) exactly as if they came
        one by one. On return, the prediction range of each predicted segment holds its prediction error
        divided by ``sqrt(1 + |w|^2)``; everything else in ``y`` is unchanged (``post`` measures ``y`` as is).

        Parameters
        ----------
        y:
            ``(C, N)`` C-contiguous float64 band-passed EMG; modified in place.
        starts, ends:
            ``(P,)`` sample indices in ``y`` of each segment's pulse and of the end of its interval.
        positions:
            ``(P,)`` stream sample index of each pulse.
        """
        starts = np.ascontiguousarray(starts, dtype=np.int64)
        ends = np.ascontiguousarray(ends, dtype=np.int64)
        positions = np.ascontiguousarray(positions, dtype=np.int64)
        n_seg = starts.size
        if n_seg == 1:
            b = self.segment_in_place(y, int(starts[0]), int(ends[0]), int(positions[0]))
            self.settle()
            return b
        self.settle()
        n_ch = y.shape[0]
        hist = self.history
        past = self._past
        # the kernels' products are numpy's where numpy's einsum sums as they do (on every x86-64 numpy wheel)
        compiled = self.kernels is not None and self.kernels.window_products_exact
        if compiled:
            n_past, n, lags, lo, hi, begin = self._plan_compiled(starts, ends, positions)
        else:
            n_past, n, lags, lo, hi = self._plan(starts, ends, positions)
        pred = n_past > 0
        weights = np.zeros((n_seg, n_ch, hist))
        # the past for the next call: copies taken before the prediction errors overwrite y
        keep = [(int(positions[k]), y[:, starts[k] : ends[k]].copy()) for k in range(max(0, n_seg - hist), n_seg)]
        if pred.any():
            if compiled:
                self._predict_compiled(y, begin, n, n_past, np.flatnonzero(pred), weights)
            else:
                self._predict(y, starts, ends, n, n_past, pred, weights)
        self._past = (past + keep)[-hist:]
        methods = (self.method,) * n_seg if pred.all() else tuple(self.method if p else "post" for p in pred.tolist())
        return SegmentBatch(methods, lo, hi, n_past, lags, weights)

    def _plan(
        self, starts: np.ndarray, ends: np.ndarray, positions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """What the consecutive segments ``[starts, ends)`` (pulses at stream samples ``positions``) are predicted
        from: the number of past segments ``(P,)`` (0: ``post``), the samples they have in common with them
        ``(P,)``, the lags ``(P, H)``, the volitional ranges ``lo``, ``hi`` ``(P,)``."""
        n_seg = starts.size
        hist = self.history
        b0 = self.blank_n
        past = self._past
        n_old = len(past)
        lens = ends - starts
        # the stored past segments, then the new ones: segment k's past j (most recent first) is k - 1 - j here
        all_len = np.array([seg.shape[1] for _, seg in past] + lens.tolist(), dtype=np.int64)
        all_pos = np.array([pos for pos, _ in past] + positions.tolist(), dtype=np.int64)
        k_all = n_old + np.arange(n_seg)
        n_past = np.minimum(hist, k_all) if self.method != "post" else np.zeros(n_seg, np.int64)
        n = lens.copy()  # samples common to a segment and its past
        lags = np.zeros((n_seg, hist), np.int64)
        for j in range(hist):
            has = n_past > j
            src = np.maximum(k_all - 1 - j, 0)
            n = np.where(has, np.minimum(n, all_len[src]), n)
            lags[:, j] = np.where(has, positions - all_pos[src], 0)
        pred = (n_past > 0) & (n - b0 >= self.min_n)
        n_past = np.where(pred, n_past, 0)
        lags[~pred] = 0
        lo = np.where(pred, starts + b0, np.minimum(starts + self.post_n, ends))
        hi = np.where(pred, starts + n, ends)
        return n_past, n, lags, lo, hi

    def _plan_compiled(
        self, starts: np.ndarray, ends: np.ndarray, positions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`_plan` by the ``plan_segments`` kernel, and where each segment starts: the kept ones side by side
        (as :meth:`_predict_compiled` puts them), then ``starts``."""
        n_seg = starts.size
        past = self._past
        past_len = np.array([seg.shape[1] for _, seg in past], np.int64)
        past_pos = np.array([pos for pos, _ in past], np.int64)
        n_past, n, lo, hi = (np.empty(n_seg, np.int64) for _ in range(4))
        lags = np.empty((n_seg, self.history), np.int64)
        begin = np.empty(len(past) + n_seg, np.int64)
        n_max = 0 if self.method == "post" else self.history
        self.kernels.plan_segments(
            past_len, past_pos, starts, ends, positions, n_max, self.blank_n, self.min_n, self.post_n,
            n_past, n, lags, lo, hi, begin,
        )  # fmt: skip
        return n_past, n, lags, lo, hi, begin

    def segment_in_place(self, y: np.ndarray, start: int, end: int, position: int) -> SegmentBatch:
        """:meth:`segments` for the one segment ``y[:, start:end]``: the same estimate in a few small
        operations (the live loop)."""
        plan = self.plan(start, end, position)
        keep = y[:, start:end].copy()  # the past for the next segment, before the prediction error replaces it
        if plan.m and plan.w is None:  # comb, gs: weights fitted on this segment's own fit window
            m0, m1 = plan.window
            cur_w = keep[:, None, m0:m1]
            past_w = [q[:, None, m0:m1] for q in plan.past] + [cur_w] * (self.history - plan.m)  # absent: masked
            present = np.arange(self.history)[None, :] < plan.m
            plan.w = self._weights(*_products(cur_w, past_w, present), np.array([plan.m]))[:, 0, : plan.m]
        if plan.m:
            self.predict(plan, y, y, plan.lo, plan.hi)
        return self.commit(plan, keep)

    def plan(self, start: int, end: int, position: int) -> SegmentPlan:
        """What the segment ``[start, end)`` of an interval (its pulse at stream sample ``position``) will be
        predicted from: the past segments, their lags, its volitional range and, for ``nlms``, the weights
        (those from before the segment: known before any of its samples). Reads the state, changes nothing."""
        self.settle()
        hist = self.history
        b0 = self.blank_n
        use = self._past[::-1][:hist] if self.method != "post" else []  # most recent first
        n = min([end - start] + [p.shape[1] for _, p in use])
        m = len(use) if use and n - b0 >= self.min_n else 0
        plan = SegmentPlan(start, end, position, m)
        if not m:
            plan.lo, plan.hi = min(start + self.post_n, end), end
            return plan
        plan.lo, plan.hi = start + b0, start + n
        plan.lags = [position - pos for pos, _ in use]
        m0, m1 = min(self.mwave_n[0], n), min(self.mwave_n[1], n)
        plan.window = (b0, n) if m1 - m0 < 2 else (m0, m1)
        plan.past = [p[:, :n] for _, p in use]
        if self.method == "nlms":
            plan.w = self._w[:, :m].copy()
        return plan

    def predict(self, plan: SegmentPlan, y: np.ndarray, out: np.ndarray, a: int, b: int) -> None:
        """The prediction error of ``y[:, a:b]`` (interval samples inside the segment's volitional range),
        divided by ``sqrt(1 + |w|^2)``, into ``out[:, a:b]`` (``out`` may be ``y``)."""
        if a >= b:
            return
        w = plan.w
        if plan.norm is None:
            plan.norm = np.sqrt(1.0 + _sum_sq(w))[:, None]
        err = out[:, a:b]
        if out is not y:
            np.copyto(err, y[:, a:b])
        ra, rb = a - plan.start, b - plan.start
        for j in range(w.shape[1]):
            err -= plan.past[j][:, ra:rb] * w[:, j : j + 1]
        err /= plan.norm

    def commit(self, plan: SegmentPlan, keep: np.ndarray) -> SegmentBatch:
        """Close the segment of ``plan`` whose band-passed samples (before any prediction error replaced
        them) are ``keep`` ``(C, end - start)``: it becomes the most recent past segment; the ``nlms`` weight
        step on its M-wave window waits for :meth:`settle`."""
        hist, m = self.history, plan.m
        lags = np.zeros((1, hist), np.int64)
        weights = np.zeros((1, keep.shape[0], hist))
        if m:
            lags[0, :m] = plan.lags
            weights[0, :, :m] = plan.w
            if self.method == "nlms":
                m0, m1 = plan.window
                self._update = (keep[:, m0:m1], [q[:, m0:m1] for q in plan.past])
        self._past = [*self._past, (plan.position, keep)][-hist:]
        method = self.method if m else "post"
        return SegmentBatch((method,), np.array([plan.lo]), np.array([plan.hi]), np.array([m]), lags, weights)

    def _predict(
        self,
        y: np.ndarray,
        starts: np.ndarray,
        ends: np.ndarray,
        n: np.ndarray,
        n_past: np.ndarray,
        pred: np.ndarray,
        weights: np.ndarray,
    ) -> None:
        """Fit the predicted segments' weights on their M-wave windows and replace their prediction range
        ``[blank_n, n)`` in ``y`` by the normalised prediction error; weights go into ``weights``."""
        idx = np.flatnonzero(pred)  # the predicted segments, in order
        nk = n[idx]
        mp = n_past[idx]
        m0, m1 = self._fit_windows(nk)
        hist = self.history
        past = self._past
        n_old = len(past)
        s0, s1 = int(starts[0]), int(ends[-1])
        # sources: the stored past segments and the part of y the new segments cover, side by side
        src = np.concatenate([seg for _, seg in past] + [y[:, s0:s1]], axis=1)
        off_old = np.cumsum([0] + [seg.shape[1] for _, seg in past])
        f_old = int(off_old[-1])
        off_all = np.concatenate([off_old[:-1], f_old + starts - s0])  # where each segment begins in src
        k_all = n_old + idx
        present = np.arange(hist) < mp[:, None]  # (Pp, H)
        gram, cross = _gathered_products(src, off_all, k_all, m0, m1, present)
        w = self._weights(gram, cross, mp)  # (C, Pp, H)
        weights[idx, :, : w.shape[2]] = w.transpose(1, 0, 2)
        gain = np.sqrt(1.0 + _sum_sq(w))  # (C, Pp)
        _gathered_errors(y, src, off_all, f_old - s0, starts[idx], k_all, mp, self.blank_n, nk, w, gain)

    def _fit_windows(self, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The fit window ``[m0, m1)`` (samples after the pulse) of segments with ``n`` samples in common with their
        past: the M-wave window after the blanking, inside those samples (all of them after the blanking where
        less than 2 of the M-wave window are)."""
        m0 = np.minimum(self.mwave_n[0], n)
        m1 = np.minimum(self.mwave_n[1], n)
        narrow = m1 - m0 < 2
        return np.where(narrow, self.blank_n, m0), np.where(narrow, n, m1)

    def _predict_compiled(
        self, y: np.ndarray, begin: np.ndarray, n: np.ndarray, n_past: np.ndarray, idx: np.ndarray, weights: np.ndarray
    ) -> None:
        """:meth:`_predict` with the compiled kernels, the same numbers: the window products and the prediction
        errors read the past segments where they are (``y``, or the copies kept from the last call, side by side)
        instead of gathering them. ``begin``, ``n``, ``n_past``: from :meth:`_plan_compiled`; ``idx``: the
        predicted segments."""
        past = self._past
        n_old = len(past)
        old = np.concatenate([seg for _, seg in past], axis=1) if past else np.empty((y.shape[0], 0))
        n_ch, n_p, hist = y.shape[0], idx.size, self.history
        b0, (fit0, fit1) = self.blank_n, self.mwave_n
        gram = np.empty((n_p, hist, hist, n_ch))  # channels last
        cross = np.empty((n_p, hist, n_ch))
        self.kernels.window_products(y, old, begin, n_old, idx, n_past, n, fit0, fit1, b0, gram, cross)
        if self.method == "nlms":  # the weights (into weights too), their steps and the gains in one pass
            w = np.empty((n_p, hist, n_ch))
            gain = np.empty((n_p, n_ch))
            self.kernels.nlms_steps(gram, cross, idx, n_past, self.mu, self._w, w, gain, weights)
        else:
            wc = self._weights(gram.transpose(3, 0, 1, 2), cross.transpose(2, 0, 1), n_past[idx])  # (C, Pp, H)
            weights[idx, :, : wc.shape[2]] = wc.transpose(1, 0, 2)
            w = np.ascontiguousarray(wc.transpose(1, 2, 0))
            gain = np.ascontiguousarray(np.sqrt(1.0 + _sum_sq(wc)).T)
        self.kernels.prediction_error(y, old, begin, n_old, idx, n_past, b0, n, w, gain)

    def _weights(self, gram: np.ndarray, cross: np.ndarray, n_past: np.ndarray) -> np.ndarray:
        """The prediction weights ``(C, P, H)`` of consecutive segments from the products over their windows:
        ``gram`` ``(C, P, H, H)`` of the past segments, ``cross`` ``(C, P, H)`` with the current one; zero for
        past segments a segment does not have (``n_past``: how many it has)."""
        n_ch, n_p, hist = cross.shape
        present = np.arange(hist) < n_past[:, None]  # (P, H)
        if self.method == "comb":
            if not self.comb_scale:
                return np.ones((n_ch, n_p, 1))
            den = gram[:, :, 0, 0]
            return (cross[:, :, 0] / np.where(den > 0, den, 1.0))[:, :, None]
        trace = sum(gram[:, :, j, j] for j in range(hist))  # (C, P): the past segments' power
        if self.method == "gs":
            reg = 1e-9 * trace / np.maximum(n_past, 1) + 1e-300
            gram = gram + np.eye(hist) * reg[:, :, None, None]
            pi, pj = np.nonzero(~present)  # absent regressors get a unit diagonal: their weight solves to 0
            gram[:, pi, pj, pj] = 1.0
            return np.linalg.solve(gram, cross[..., None])[..., 0]
        return self._nlms(gram, cross, trace) * present

    def _nlms(self, gram: np.ndarray, cross: np.ndarray, norm: np.ndarray, w0: np.ndarray | None = None) -> np.ndarray:
        """The a priori weights ``(C, P, H)`` of consecutive segments, each followed by one normalised LMS
        step on its M-wave window: ``w += mu (cross - gram w) / trace(gram)``. Written as one affine map per
        segment, ``[w; 1] <- [[I - mu gram / tr, mu cross / tr], [0, 1]] [w; 1]``, built for all segments at
        once; only applying them is a loop over segments. ``norm``: ``(C, P)`` the traces. ``w0``: the weights
        to start from, ``(C, H')`` for ``H'`` past segments (default: all the kept weights); when given, the
        weights after the last segment are returned ``(C, 1, H')`` and not kept."""
        n_ch, n_p, hist = cross.shape
        if self.kernels is not None:  # the same recursion, compiled
            w = np.empty((n_p + 1, n_ch, hist))
            w[0] = self._w if w0 is None else w0
            c = np.ascontiguousarray
            self.kernels.nlms_weights(c(gram), c(cross), c(self.mu / np.where(norm > 0, norm, 1.0)), w)
            if w0 is not None:
                return w[n_p][:, None, :]
            self._w = w[n_p].copy()
            return w[:n_p].transpose(1, 0, 2)
        coef = (self.mu / np.where(norm > 0, norm, 1.0)).T  # (P, C)
        step = np.zeros((n_p, n_ch, hist + 1, hist + 1))  # one map per segment
        for i in range(hist):
            for j in range(hist):
                step[:, :, i, j] = (i == j) - gram[:, :, i, j].T * coef
            step[:, :, i, hist] = cross[:, :, i].T * coef
        step[:, :, hist, hist] = 1.0
        w = np.empty((n_p + 1, n_ch, hist + 1, 1))  # [w; 1] before each segment, and after the last
        w[0, :, :hist, 0] = self._w if w0 is None else w0
        w[0, :, hist] = 1.0
        for k in range(n_p):
            np.matmul(step[k], w[k], out=w[k + 1])
        if w0 is not None:
            return w[n_p, :, :hist, 0][:, None, :]
        self._w = w[n_p, :, :hist, 0].copy()
        return w[:n_p, :, :hist, 0].transpose(1, 0, 2)


def _products(cur: np.ndarray, past: list[np.ndarray], present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sums over the fit window of the products of past segments ``(C, P, H, H)`` and of each past segment
    with the current one ``(C, P, H)``, from ``(C, P, W)`` windows; 0 where a segment lacks a past
    (``present`` ``(P, H)``)."""
    n_ch, n_p = cur.shape[:2]
    hist = len(past)
    gram = np.empty((n_ch, n_p, hist, hist))
    cross = np.empty((n_ch, n_p, hist))
    for i in range(hist):
        for j in range(i, hist):
            gram[:, :, i, j] = gram[:, :, j, i] = _dot(past[i], past[j])
        cross[:, :, i] = _dot(past[i], cur)
    if not present.all():
        gram[:, ~(present[:, :, None] & present[:, None, :])] = 0.0
        cross[:, ~present] = 0.0
    return gram, cross


def _gathered_products(
    src: np.ndarray, off: np.ndarray, k: np.ndarray, m0: np.ndarray, m1: np.ndarray, present: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_products` of the segments ``k`` (increasing) over their fit windows ``[m0, m1)``, the segments'
    samples side by side in ``src`` ``(C, M)`` (segment ``i`` from ``off[i]``, its past ones the segments before
    it): gathered into one array and formed window by window (segments with the same window together), in
    exactly the arithmetic of a segment on its own."""
    hist = present.shape[1]
    # the window samples of every segment (from the first window start to the last window end)
    lw0 = int(m0.min())
    head = np.take(src, np.minimum(off[:, None] + np.arange(lw0, int(m1.max())), src.shape[1] - 1), axis=1)
    span = int(m1.max()) + 1
    keys, group, count = np.unique(m0 * span + m1, return_inverse=True, return_counts=True)
    windows = np.stack([keys // span - lw0, keys % span - lw0], axis=1).tolist()  # (start, end) in head
    main = int(np.argmax(count))  # the usual window: formed for all segments (views), kept where it is theirs
    a, b = windows[main]
    gram, cross = _chain_products(head[:, :, a:b], k, present)
    for g, (a, b) in enumerate(windows):
        if g != main:
            sel = np.flatnonzero(group == g)
            ks = k[sel]
            past = [head[:, np.maximum(ks - 1 - j, 0), a:b] for j in range(hist)]
            gram[:, sel], cross[:, sel] = _products(head[:, ks, a:b], past, present[sel])
    return gram, cross


def _gathered_errors(
    y: np.ndarray,
    src: np.ndarray,
    off: np.ndarray,
    own: int,
    starts: np.ndarray,
    k: np.ndarray,
    n_past: np.ndarray,
    b0: int,
    n: np.ndarray,
    w: np.ndarray,
    gain: np.ndarray,
) -> None:
    """The prediction errors over ``[b0, n)`` of the segments ``k`` (at ``starts`` in ``y``; their samples and
    their past ones' in ``src`` from ``off``, as for :func:`_gathered_products`; ``y[:, t]`` is ``src[:, t + own]``),
    divided by ``gain`` ``(C, P)``, with the weights ``w`` ``(C, P, H)``: computed in place on ``y`` between the
    first and the last of them: blocks alternate prediction range and gap (untouched: weight 0, gain 1)."""
    n_ch, n_p, m = w.shape
    lo = starts + b0
    hi = starts + n
    a0, a1 = int(lo[0]), int(hi[-1])
    blens = np.empty(2 * n_p - 1, np.int64)
    blens[0::2] = hi - lo
    blens[1::2] = lo[1:] - hi[:-1]
    t = np.arange(a0, a1)
    view = y[:, a0:a1]
    for j in range(m):
        wb = np.zeros((n_ch, 2 * n_p - 1))
        wb[:, 0::2] = w[:, :, j]
        shift = np.full(2 * n_p - 1, own)  # gaps read their own sample (times weight 0)
        shift[0::2] = np.where(n_past > j, off[np.maximum(k - 1 - j, 0)] - starts, own)
        pj = np.take(src, t + np.repeat(shift, blens), axis=1)
        pj *= np.repeat(wb, blens, axis=1)
        view -= pj
    gb = np.ones((n_ch, 2 * n_p - 1))
    gb[:, 0::2] = gain
    view /= np.repeat(gb, blens, axis=1)


def _chain_products(win: np.ndarray, k: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_products` of the segments ``k`` (increasing rows of the ``(C, rows, W)`` windows ``win``) and
    their past ones, the rows above them. Segment ``k``'s products are products of rows ``r`` and ``r - d``
    (``d = 0 .. H``), which it shares with its neighbours: each is formed once (by the same :func:`_dot`, so
    with the same sums), ``H + 1`` per row instead of ``H (H + 3) / 2``."""
    n_ch = win.shape[0]
    n_p, hist = present.shape
    r0 = max(int(k[0]) - hist, 0)
    rows = win[:, r0 : int(k[-1]) + 1]
    n_r = rows.shape[1]
    # lag[d][:, r - r0] = <row r, row r - d> for the rows r >= r0 + d (earlier ones: never used unmasked)
    lag = [_dot(rows, rows)]
    for d in range(1, hist + 1):
        lag_d = np.zeros((n_ch, n_r))
        if n_r > d:
            lag_d[:, d:] = _dot(rows[:, d:], rows[:, :-d])
        lag.append(lag_d)
    gram = np.empty((n_ch, n_p, hist, hist))
    cross = np.empty((n_ch, n_p, hist))
    at = k - r0
    for i in range(hist):
        src = np.maximum(at - 1 - i, 0)  # the row of past i
        for j in range(i, hist):
            gram[:, :, i, j] = gram[:, :, j, i] = _pick(lag[j - i], src)
        cross[:, :, i] = _pick(lag[i + 1], at)
    if not present.all():
        gram[:, ~(present[:, :, None] & present[:, None, :])] = 0.0
        cross[:, ~present] = 0.0
    return gram, cross


def _sum_sq(w: np.ndarray) -> np.ndarray:
    """``sum(w * w, axis=-1)`` for a short last axis (the weights of a few past segments), term by term."""
    out = w[..., 0] * w[..., 0]
    for j in range(1, w.shape[-1]):
        out += w[..., j] * w[..., j]
    return out


def _pick(a: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``a[:, max(k, 0)]`` for increasing ``k``: a view when ``k`` is a run of consecutive indices (usual)."""
    if k.size and k[0] >= 0 and int(k[-1]) - int(k[0]) == k.size - 1:
        return a[:, int(k[0]) : int(k[-1]) + 1]
    return np.take(a, np.maximum(k, 0), axis=1)
