"""Per-interval estimation: artifact, M-wave, volitional effort and fatigue indices, streaming.

:class:`IntervalEstimator` is pure and synchronous: :meth:`~IntervalEstimator.step` takes an interval's
samples (any units the stream declares) and the times of the pulses in it, and returns an
:class:`~closedloop.types.Estimate` in microvolts. Its state (filter memory, past pulse segments, MVC,
M-wave reference, spectral accumulator, smoothed effort) is explicit; the same object serves the live
loop and replays.

Per interval::

    raw ---- M-wave window after each pulse: peak-to-peak, rectified area, latency (raw, baseline removed)
     |
     +-> blank the artifact (straight line over blank_s) -> notch + band-pass (streaming, state carried)
            |
            +-> volitional EMG of the pulse segment by the chosen method (post, comb, gs, nlms)
            |     or, without a pulse, of the whole interval  -> effort (uV), % MVC, smoothed
            +-> its residual, gaps as zeros in time, into a streaming Welch estimate
                  -> median and mean frequency, Dimitrov FInsm5 over the last spectral_window_s

Windows are in seconds after the pulse; defaults suit surface EMG::

    0 .. blank_s                   artifact: never measured, bridged by a straight line before filtering
    mwave_window_s[0] .. [1]       M-wave measures; also where comb/gs/nlms fit their gains
    post_start_s .. next pulse     the ``post`` method's volitional window
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import signal

from closedloop.errors import ConfigError
from closedloop.estimation.artifacts import blank_linear
from closedloop.estimation.filters import FilterChain, SOSFilter, bandpass_sos, notch_sos
from closedloop.estimation.segmenter import Interval
from closedloop.estimation.spectral import StreamingWelch, spectral_indices
from closedloop.estimation.volitional import METHODS, VolitionalEstimator
from closedloop.types import Estimate, StreamInfo

__all__ = ["EstimatorConfig", "IntervalEstimator", "mvc_from_efforts"]


class _NoResponse:
    """Stands for the residual of a pulse-free window (no prediction filter) in _track_response."""

    lags = None
    weights = None


_NO_RESPONSE = _NoResponse()


@dataclass(frozen=True)
class EstimatorConfig:
    """Estimator settings. Times in seconds (after the pulse for windows), frequencies in Hz.

    Parameters
    ----------
    method:
        Volitional EMG method during stimulation: ``"nlms"`` (default), ``"comb"``, ``"gs"``, ``"post"``
        (see :mod:`closedloop.estimation.volitional`; compared against ground truth in the README).
    band_hz:
        Band-pass corners; None gives (20, min(450, 0.45 x rate)).
    filter_order:
        Butterworth order of the band-pass.
    notch_hz:
        Power-line frequency (50 or 60) whose harmonics inside the band are notched; None: no notch.
    notch_q:
        Quality factor of each notch.
    blank_s:
        Artifact blanking after each pulse.
    mwave_window_s:
        Start and end of the M-wave window.
    post_start_s:
        Start of the ``post`` method's window (default: the end of the M-wave window).
    min_volitional_s:
        Shortest volitional window that gives an effort value.
    history:
        Past pulse segments used by ``gs`` and ``nlms``.
    nlms_mu:
        Step size of ``nlms``.
    comb_scale:
        Let the comb filter fit a gain per channel on the M-wave window.
    smoothing_s:
        Time constant of the exponential smoothing of effort across intervals (0: none), applied to the
        mean square (the smoothed effort is the square root of the smoothed power).
    spectral_window_s:
        Volitional EMG over which median/mean frequency and FInsm5 are computed.
    spectral_update_s:
        How often (in stream time) those indices are recomputed; between updates they keep their value.
    mwave_reference_pulses:
        The first this-many pulses at the current intensity define the M-wave reference of the relative
        fatigue indices (a change of intensity by more than 2 % starts a new reference).
    control_channel:
        Index of the EMG channel whose values drive the controller.
    mvc_uv:
        Volitional RMS at maximal voluntary contraction (uV), one for all channels or one per channel;
        None until calibrated.
    pulse_search_s:
        How far after its delivery time a pulse's artifact is looked for (0: trust the delivery time).
    artifact_factor:
        An artifact is a jump larger than this many times the interval's median sample-to-sample jump.
    history_reset_s:
        After a pause in stimulation longer than this (s), past pulse segments are forgotten (the evoked
        response after a pause is no reference); a single skipped pulse keeps them.
    """

    method: str = "nlms"
    band_hz: tuple[float, float] | None = None
    filter_order: int = 4
    notch_hz: float | None = None
    notch_q: float = 30.0
    blank_s: float = 0.003
    mwave_window_s: tuple[float, float] = (0.003, 0.020)
    post_start_s: float | None = None
    min_volitional_s: float = 0.005
    history: int = 2
    nlms_mu: float = 0.3
    comb_scale: bool = True
    smoothing_s: float = 0.25
    spectral_window_s: float = 1.0
    spectral_update_s: float = 0.25
    mwave_reference_pulses: int = 5
    control_channel: int = 0
    mvc_uv: float | tuple[float, ...] | None = None
    pulse_search_s: float = 0.005
    artifact_factor: float = 10.0
    history_reset_s: float = 0.25

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"estimator method = {self.method!r} not allowed; use one of {', '.join(METHODS)}")
        a, b = self.mwave_window_s
        if not (0 <= a < b):
            raise ConfigError(f"mwave_window_s = {self.mwave_window_s}: need 0 <= start < end (seconds after pulse)")
        if not 0 <= self.blank_s <= a:
            raise ConfigError(f"blank_s = {self.blank_s}: must lie in 0..mwave_window_s[0] ({a})")
        if self.post_start_s is not None and self.post_start_s < self.blank_s:
            raise ConfigError(f"post_start_s = {self.post_start_s} must not start inside the artifact blanking")
        if self.band_hz is not None and not (0 < self.band_hz[0] < self.band_hz[1]):
            raise ConfigError(f"band_hz = {self.band_hz}: need 0 < low < high")
        if self.notch_hz is not None and not self.notch_hz > 0:
            raise ConfigError(f"notch_hz = {self.notch_hz}: give the power-line frequency (50 or 60) or None")
        if self.min_volitional_s <= 0 or self.smoothing_s < 0 or self.spectral_window_s <= 0:
            raise ConfigError("min_volitional_s and spectral_window_s must be > 0 and smoothing_s >= 0")
        if not self.spectral_update_s > 0:
            raise ConfigError(f"spectral_update_s = {self.spectral_update_s}: must be > 0")
        if self.pulse_search_s < 0 or self.artifact_factor <= 1:
            raise ConfigError("pulse_search_s must be >= 0 and artifact_factor > 1")
        if self.mwave_reference_pulses < 1:
            raise ConfigError(f"mwave_reference_pulses = {self.mwave_reference_pulses}: need >= 1")
        if self.mvc_uv is not None:
            mvc = np.atleast_1d(np.asarray(self.mvc_uv, dtype=float))
            if not (np.isfinite(mvc).all() and (mvc > 0).all()):
                raise ConfigError(f"mvc_uv = {self.mvc_uv}: must be positive numbers of microvolts")

    @property
    def post_start(self) -> float:
        """Start of the post-M-wave window (s after the pulse)."""
        return self.mwave_window_s[1] if self.post_start_s is None else self.post_start_s

    def band_for(self, rate_hz: float) -> tuple[float, float]:
        """The band-pass corners in force at ``rate_hz``."""
        if self.band_hz is None:
            return (20.0, min(450.0, 0.45 * rate_hz))
        if self.band_hz[1] >= 0.5 * rate_hz:
            raise ConfigError(
                f"band_hz = {self.band_hz}: the upper corner must be below half the rate ({rate_hz / 2:g} Hz)"
            )
        return self.band_hz


def mvc_from_efforts(efforts_uv: np.ndarray, interval_s: float, window_s: float = 0.5) -> np.ndarray:
    """MVC reference per channel: the largest mean effort over ``window_s`` of consecutive intervals (uV).

    Parameters
    ----------
    efforts_uv:
        ``(n_intervals, n_channels)`` volitional RMS of each interval of the calibration contraction.
    interval_s:
        Interval length (s).
    window_s:
        Length of the averaging window (s).
    """
    e = np.asarray(efforts_uv, dtype=float)
    if e.ndim == 1:
        e = e[:, None]
    e = e[np.isfinite(e).all(axis=1)]
    if e.shape[0] == 0:
        raise ConfigError("MVC calibration found no volitional EMG (no finite effort values)")
    w = max(1, min(e.shape[0], round(window_s / interval_s)))
    csum = np.cumsum(np.vstack([np.zeros((1, e.shape[1])), e]), axis=0)
    means = (csum[w:] - csum[:-w]) / w
    return means.max(axis=0)


class IntervalEstimator:
    """Measures M-wave, volitional EMG and fatigue indices in consecutive intervals of one EMG stream.

    Parameters
    ----------
    info:
        The EMG stream (rate, channels, units).
    config:
        Windows, method, filters, smoothing, control channel, MVC.
    """

    def __init__(self, info: StreamInfo, config: EstimatorConfig | None = None) -> None:
        cfg = self.config = config or EstimatorConfig()
        self.info = info
        n_ch = info.n_channels
        if not 0 <= cfg.control_channel < n_ch:
            raise ConfigError(f"control_channel = {cfg.control_channel}: the stream has channels 0..{n_ch - 1}")
        fs = self._fs = float(info.rate_hz)
        if fs <= 0:
            raise ConfigError(f"stream {info.name!r} has no regular sampling rate")
        self.band_hz = cfg.band_for(fs)
        self._scale = info.scale_to_uv()
        self._blank = round(cfg.blank_s * fs)
        self._m0 = round(cfg.mwave_window_s[0] * fs)
        self._m1 = round(cfg.mwave_window_s[1] * fs)
        self._pre = max(2, round(0.002 * fs))  # raw samples before a pulse that give the M-wave baseline
        self._search = round(cfg.pulse_search_s * fs)
        filters = []
        if cfg.notch_hz is not None and cfg.notch_hz < self.band_hz[1]:
            filters.append(SOSFilter(notch_sos(cfg.notch_hz, fs, cfg.notch_q, up_to_hz=self.band_hz[1]), n_ch))
        # starting the band-pass at rest would turn an amplifier's DC offset into a long start transient
        filters.append(SOSFilter(bandpass_sos(*self.band_hz, fs, cfg.filter_order), n_ch, initial="first_sample"))
        self.filter = FilterChain(filters)
        self.volitional = VolitionalEstimator(
            cfg.method,
            n_ch,
            self._blank,
            (self._m0, self._m1),
            round(cfg.post_start * fs),
            round(cfg.min_volitional_s * fs),
            cfg.history,
            cfg.nlms_mu,
            cfg.comb_scale,
        )
        self.welch = StreamingWelch(fs, n_ch, window_s=cfg.spectral_window_s, band_hz=self.band_hz)
        # Spectral indices describe the EMG, not our filters: divide the band-pass/notch response back out
        # (bins where the notches remove more than 90 % of the power are left out).
        h2 = np.ones(self.welch.freqs.shape[0])
        for f in filters:
            _, h = signal.sosfreqz(f.sos, worN=self.welch.freqs, fs=fs)
            h2 *= np.abs(h) ** 2
        self._psd_weight = np.where(h2 > 0.1, 1.0 / np.maximum(h2, 1e-12), 0.0)[:, None]
        #: Smoothed effort of the control channel (uV), NaN before the first value.
        self.effort_smooth_uv = math.nan
        self._power_smooth = math.nan
        #: MVC reference per channel (uV); None until calibrated (see :meth:`set_mvc`).
        self.mvc_uv: np.ndarray | None = None
        if cfg.mvc_uv is not None:
            self.set_mvc(cfg.mvc_uv)
        #: M-wave reference per channel (peak-to-peak uV, area uV*s): mean of the first pulses.
        self.mwave_ref_ptp: np.ndarray | None = None
        self.mwave_ref_area: np.ndarray | None = None
        self._ref_ptp: list[np.ndarray] = []
        self._ref_area: list[np.ndarray] = []
        self._ref_amp = math.nan
        self._tail = np.zeros((0, n_ch))  # last raw samples of the previous interval
        self._spectral = (np.full(n_ch, np.nan),) * 3
        self._welch_seen = 0
        self._spectral_every = max(1, round(cfg.spectral_update_s * fs))
        self._spectral_due = -1
        self._last_pulse_t = -math.inf
        win = self.welch.window
        nps = win.shape[0]
        acf = np.array([win[: nps - lag] @ win[lag:] for lag in range(nps)]) / (win @ win)
        lag = np.arange(nps)
        self._resp_cos = np.cos(2 * np.pi * np.outer(self.welch.freqs, lag) / fs) * acf  # (F, nperseg)
        self._resp_lag = np.zeros((nps, n_ch))
        self._resp_n = 0.0
        self._resp_any = False

    def set_mvc(self, mvc_uv: float | np.ndarray) -> None:
        """Set the MVC reference (uV): one value for all channels or one per channel."""
        mvc = np.broadcast_to(np.asarray(mvc_uv, dtype=float), (self.info.n_channels,)).copy()
        if not (np.isfinite(mvc).all() and (mvc > 0).all()):
            raise ConfigError(f"MVC reference {mvc_uv!r} must be positive microvolts for every channel")
        self.mvc_uv = mvc

    def reset_mwave_reference(self) -> None:
        """Take the next pulses as the M-wave reference of the relative fatigue indices."""
        self.mwave_ref_ptp = self.mwave_ref_area = None
        self._ref_ptp, self._ref_area = [], []

    # -- the step ---------------------------------------------------------------------------------------
    def step(self, interval: Interval, pulse_times: Sequence[float] = (), amplitude_ma: float = math.nan) -> Estimate:
        """Estimate one interval.

        Parameters
        ----------
        interval:
            Consecutive samples (in the stream's units) and their LSL timestamps.
        pulse_times:
            LSL times of the pulses delivered in this interval (usually none or one). Pulses closer than
            ``blank_s`` to the previous one (a doublet) are blanked together and measured as one stimulus.
        amplitude_ma:
            Amplitude of the first pulse (mA), recorded with the estimate.
        """
        cfg = self.config
        x = np.array(interval.samples, dtype=np.float64)
        ts = interval.timestamps
        n, n_ch = x.shape
        warnings: list[str] = []
        finite = np.isfinite(x)
        bad = not finite.all()
        if bad:
            warnings.append("non-finite samples in interval")
            x[~finite] = 0.0  # keeps the filter state finite; this interval's values are NaN
        starts = self._pulse_starts(x, ts, pulse_times, warnings)
        p = starts[0] if starts else None
        nan = np.full(n_ch, np.nan)
        ptp = area = latency = nan
        if p is not None and not bad:
            ptp, area, latency = self._mwave(x, p, warnings, amplitude_ma)
        blank_linear(x, starts, self._blank, before=self._tail[-1] if self._tail.shape[0] else None)
        self._tail = x[-self._pre :].copy()
        y = self.filter.step(x) * self._scale
        if p is None:
            res = self.volitional.window(y)
            if ts[-1] - self._last_pulse_t > cfg.history_reset_s:
                self.volitional.reset()  # segments from before a pause are no reference for the next pulses
            offset = 0
        else:
            res = self.volitional.segment(y[p:], interval.start_sample + p)
            self._last_pulse_t = float(ts[p])
            offset = p
            if res.method != cfg.method and cfg.method != "post":
                warnings.append(f"{cfg.method} needs a previous pulse segment: used post")
        resid = np.zeros_like(y)
        valid = np.zeros(n, bool)
        resid[offset:] = res.residual
        valid[offset:] = res.valid
        if bad:
            valid[:] = False
        self.welch.step(resid, valid)
        self._track_response(res, int(valid.sum()), n)
        self._update_spectral()
        effort = res.effort
        if np.isnan(effort).all() and not bad:
            warnings.append(f"volitional window shorter than {cfg.min_volitional_s * 1e3:.1f} ms ({res.method})")
        if bad:
            effort = ptp = area = latency = nan
        t_start = float(ts[p]) if p is not None else float(ts[0])
        return self._estimate(
            interval,
            t_start,
            amplitude_ma if p is not None else math.nan,
            effort,
            ptp,
            area,
            latency,
            n / self._fs,
            tuple(warnings),
            p is not None,
        )

    def step_many(
        self,
        intervals: Sequence[Interval],
        pulse_times: Sequence[Sequence[float]] | None = None,
        amplitudes_ma: Sequence[float] | None = None,
    ) -> list[Estimate]:
        """Estimate consecutive intervals; the same results as calling :meth:`step` on each in turn.

        Runs of intervals without pulses (monitoring, replays of unstimulated EMG, pauses) are processed
        together: one filter call and one vectorised RMS for the run. Intervals with pulses go one by one
        (their windows, blanking and prediction filters depend on the interval before).
        """
        k = len(intervals)
        times = list(pulse_times) if pulse_times is not None else [()] * k
        amps = list(amplitudes_ma) if amplitudes_ma is not None else [math.nan] * k
        out: list[Estimate] = []
        i = 0
        while i < k:
            if len(times[i]) > 0:
                out.append(self.step(intervals[i], times[i], amps[i]))
                i += 1
                continue
            j = i
            while j < k and len(times[j]) == 0:
                j += 1
            out.extend(self._windows(intervals[i:j]) if j - i > 1 else [self.step(intervals[i])])
            i = j
        return out

    def _windows(self, ivs: Sequence[Interval]) -> list[Estimate]:
        """Consecutive intervals without pulses, filtered in one call (see :meth:`step` for the semantics)."""
        cfg = self.config
        lens = np.array([len(iv.timestamps) for iv in ivs])
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
        x = np.concatenate([iv.samples for iv in ivs]).astype(np.float64)
        finite = np.isfinite(x)
        bad_rows = ~finite.all(axis=1)
        any_bad = bool(bad_rows.any())
        if any_bad:
            x[~finite] = 0.0
            bad = np.add.reduceat(bad_rows, starts) > 0
        else:
            bad = np.zeros(len(ivs), bool)
        last = ivs[-1].samples.shape[0]
        self._tail = x[-min(self._pre, last) :].copy()
        y = self.filter.step(x) * self._scale
        ms = np.add.reduceat(y * y, starts, axis=0) / lens[:, None]
        effort = np.sqrt(ms)
        effort[lens < self.volitional.min_n] = np.nan
        if ivs[-1].timestamps[-1] - self._last_pulse_t > cfg.history_reset_s:
            self.volitional.reset()  # as step() would for the first of them: nothing before a pause is kept
        nan = np.full(y.shape[1], np.nan)
        out = []
        for k, iv in enumerate(ivs):
            a, n = starts[k], lens[k]
            valid = np.full(n, not bad[k])
            self.welch.step(y[a : a + n], valid)
            self._track_response(_NO_RESPONSE, int(valid.sum()) if not bad[k] else 0, n)
            self._update_spectral()
            warnings: tuple[str, ...] = ()
            e = effort[k]
            if bad[k]:
                warnings = ("non-finite samples in interval",)
                e = nan
            elif np.isnan(e).all():
                warnings = (f"volitional window shorter than {cfg.min_volitional_s * 1e3:.1f} ms (window)",)
            out.append(
                self._estimate(iv, float(iv.timestamps[0]), math.nan, e, nan, nan, nan, n / self._fs, warnings, False)
            )
        return out

    def _update_spectral(self) -> None:
        w = self.welch
        due = w.n_samples // self._spectral_every
        if w.segments_pushed != self._welch_seen and w.n_segments >= w.min_segments and due != self._spectral_due:
            # new segments since the last update, and a new update period of the stream (sample-counted, so
            # the same whatever the interval lengths and chunking)
            self._welch_seen = w.segments_pushed
            self._spectral_due = due
            freqs, psd = w.psd()
            weight = self._response_psd_weight()
            self._spectral = tuple(
                np.asarray(v, dtype=float) for v in spectral_indices(freqs, psd * weight, self.band_hz)
            )

    # -- parts ----------------------------------------------------------------------------------------
    def _track_response(self, res, n_valid: int, n: int) -> None:
        """Running average, over the spectral window and weighted by each interval's valid samples, of the
        spectral response of the residual: for prediction methods
        ``|1 - sum_j w_j exp(-i w l_j)|^2 / (1 + |w|^2) = 1 + sum over lags of a_l cos(w l)``, so it is kept
        as lag coefficients ``a_l`` (``-2 w_j / (1+|w|^2)`` at ``l_j``, ``2 w_j w_k / (1+|w|^2)`` at
        ``|l_j - l_k|``); see :meth:`_response_psd_weight`."""
        decay = math.exp(-n / (self.config.spectral_window_s * self._fs))
        self._resp_lag *= decay
        self._resp_n *= decay
        if not n_valid:
            return
        self._resp_n += n_valid
        if res.lags is None:
            return
        self._resp_any = True
        lags = np.rint(res.lags).astype(np.int64)
        w = res.weights  # (C, M)
        norm = n_valid / (1.0 + np.sum(w * w, axis=1))  # (C,)
        max_lag = self._resp_lag.shape[0]
        for j, lj in enumerate(lags):
            if 0 < lj < max_lag:
                self._resp_lag[lj] -= 2.0 * w[:, j] * norm
            for k in range(j + 1, len(lags)):
                d = abs(int(lags[k] - lj))
                if 0 < d < max_lag:
                    self._resp_lag[d] += 2.0 * w[:, j] * w[:, k] * norm

    def _response_psd_weight(self) -> np.ndarray:
        """Weights that turn the Welch PSD of the residual into the volitional EMG's PSD: the filters'
        response and the averaged prediction-error response divided out. The latter is seen through the
        Welch window: a cosine of lag ``l`` in the response shows in the periodogram attenuated by the
        window's normalised autocorrelation at ``l`` (comb filter notches narrower than the resolution are
        smeared exactly as the periodogram smears them). Bins where less than 20 % would be left are
        dropped (a comb filter's notches)."""
        if not self._resp_any:  # only unfiltered residuals so far (windows, post): nothing to divide out
            return self._psd_weight
        n = max(self._resp_n, 1e-12)
        h2 = 1.0 + self._resp_cos @ self._resp_lag / n  # (F, C)
        return np.where(h2 > 0.2, self._psd_weight / np.maximum(h2, 1e-12), 0.0)

    def _pulse_starts(
        self, x: np.ndarray, ts: np.ndarray, pulse_times: Sequence[float], warnings: list[str]
    ) -> list[int]:
        """Sample offsets of the pulses in this interval, located on their artifacts, doublets merged.

        A pulse's delivery time says roughly where it is; a stimulator (or a simulated device working in
        blocks) may apply it a few samples later. Each pulse is placed on the first sample within
        ``pulse_search_s`` after its nominal time whose jump from the previous sample stands out (more than
        ``artifact_factor`` times the interval's median jump): the artifact's onset, which comes before any
        M-wave. Without such a jump the nominal sample is kept (set ``pulse_search_s=0`` for stimulators
        that leave no artifact).
        """
        if len(pulse_times) == 0:
            return []
        idx = np.searchsorted(ts, np.asarray(pulse_times, dtype=float) - 0.5 / self._fs)
        idx = idx[idx < ts.shape[0]]
        if self._search and idx.size:
            prev = self._tail[-1:] if self._tail.shape[0] else x[:1]
            jump = np.abs(np.diff(np.vstack([prev, x]), axis=0)).max(axis=1)  # jump[j]: x[j] - x[j-1]
            floor = self.config.artifact_factor * float(np.partition(jump, jump.size // 2)[jump.size // 2]) + 1e-12
            refined = []
            for i in idx:
                above = np.flatnonzero(jump[i : i + self._search + 1] > floor)
                refined.append(i + int(above[0]) if above.size else i)
            idx = np.asarray(refined)
        starts: list[int] = []
        for i in np.sort(idx):
            if starts and i - starts[-1] < max(self._blank, 1):
                warnings.append("pulse inside the blanking window of the previous one: measured as one stimulus")
                continue
            starts.append(int(i))
        if len(starts) > 1:
            warnings.append(f"{len(starts)} pulses in one interval: the first opens it")
        return starts

    def _mwave(
        self, x: np.ndarray, p: int, warnings: list[str], amplitude_ma: float = math.nan
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n, n_ch = x.shape
        m0, m1 = p + self._m0, p + self._m1
        nan = np.full(n_ch, np.nan)
        if m1 > n:
            # the next pulse comes before the window ends: measure what there is, if at least half of it
            short = (
                f"{(n - p) / self._fs * 1e3:.1f} ms after the pulse, window ends at "
                f"{self.config.mwave_window_s[1] * 1e3:.1f} ms"
            )
            if n - m0 < (self._m1 - self._m0) / 2:
                warnings.append(f"interval too short for the M-wave window: {short}")
                return nan, nan, nan
            warnings.append(f"M-wave window truncated by the next pulse: {short}")
            m1 = n
        pre = x[max(0, p - self._pre) : p] if p > 0 else self._tail
        base = pre.mean(axis=0) if pre.shape[0] else x[m0]
        seg = x[m0:m1] - base
        ptp = (seg.max(axis=0) - seg.min(axis=0)) * self._scale
        dev = np.abs(seg)
        area = dev.sum(axis=0) / self._fs * self._scale
        latency = (np.argmax(dev, axis=0) + self._m0) / self._fs
        # the reference is the first pulses at the current intensity: a change of more than 2 % starts a new
        # one (an M-wave fatigue index compares like with like; under a varying intensity it stays NaN)
        if math.isfinite(amplitude_ma):
            if not (math.isfinite(self._ref_amp) and abs(amplitude_ma - self._ref_amp) <= 0.02 * self._ref_amp):
                self.reset_mwave_reference()
                self._ref_amp = amplitude_ma
        if self.mwave_ref_ptp is None:
            self._ref_ptp.append(ptp)
            self._ref_area.append(area)
            if len(self._ref_ptp) >= self.config.mwave_reference_pulses:
                self.mwave_ref_ptp = np.mean(self._ref_ptp, axis=0)
                self.mwave_ref_area = np.mean(self._ref_area, axis=0)
        return ptp, area, latency

    def _estimate(
        self,
        interval: Interval,
        t_start: float,
        amplitude_ma: float,
        effort: np.ndarray,
        ptp: np.ndarray,
        area: np.ndarray,
        latency: np.ndarray,
        duration_s: float,
        warnings: tuple[str, ...],
        has_pulse: bool,
    ) -> Estimate:
        c = self.config.control_channel
        e = float(effort[c])
        if math.isfinite(e):
            # smoothed in the power domain: sqrt of the averaged mean square, so that short, noisy RMS
            # values do not bias the average low (the mean of RMS values underestimates the RMS)
            if math.isnan(self.effort_smooth_uv) or self.config.smoothing_s == 0:
                self._power_smooth = e * e
            else:
                alpha = 1.0 - math.exp(-duration_s / self.config.smoothing_s)
                self._power_smooth += alpha * (e * e - self._power_smooth)
            self.effort_smooth_uv = math.sqrt(self._power_smooth)
        mvc = self.mvc_uv
        pct = self.effort_smooth_uv / mvc[c] * 100.0 if mvc is not None else math.nan
        ref_p, ref_a = self.mwave_ref_ptp, self.mwave_ref_area
        nan = np.full_like(ptp, np.nan)
        mdf, mnf, fi = self._spectral
        return Estimate(
            index=interval.index,
            t_start=t_start,
            t_end=float(interval.timestamps[-1]),
            amplitude_ma=float(amplitude_ma),
            effort_uv=e,
            effort_smooth_uv=self.effort_smooth_uv,
            effort_pct_mvc=pct,
            mwave_ptp_uv=float(ptp[c]),
            channel_effort_uv=effort,
            channel_mwave_ptp_uv=ptp,
            channel_mwave_area_uvs=area,
            channel_mwave_latency_s=latency,
            channel_effort_pct_mvc=effort / mvc * 100.0 if mvc is not None else np.full_like(effort, np.nan),
            channel_mwave_ptp_rel=ptp / ref_p if ref_p is not None else nan,
            channel_mwave_area_rel=area / ref_a if ref_a is not None else nan,
            channel_mdf_hz=mdf,
            channel_mnf_hz=mnf,
            channel_fi_nsm5=fi,
            warnings=warnings,
            has_pulse=has_pulse,
        )
