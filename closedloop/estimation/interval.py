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
            |     or, without a pulse, of the interval after the last pulse's evoked response
            |     (post_start_s after it: a late pulse's M-wave runs on into the next interval)
            |                                                  -> effort (uV), % MVC, smoothed
            +-> its residual, gaps as zeros in time, into a streaming Welch estimate
                  -> median and mean frequency, Dimitrov FInsm5 over the last spectral_window_s

Live, an interval is worked on as its chunks arrive (:meth:`~IntervalEstimator.lookahead`): copied, its pulse
located on the samples so far, blanked, band-passed and (``nlms``, whose weights are known before the segment)
predicted, so that the chunk completing it leaves only its own samples to process; :meth:`~IntervalEstimator.step`
checks the location on the whole interval and starts over if it differs. The estimate is the same either way.

The spectral stage runs after the estimate is returned (:meth:`~IntervalEstimator.settle`: the live loop
calls it once the pulse is out), so an interval's estimate carries the spectral indices computed up to the
end of the previous interval (they are updated every ``spectral_update_s`` over a ``spectral_window_s``
window: one interval later changes nothing a fatigue index shows) and no Welch segment's FFT delays a pulse.

Many intervals at once (:meth:`~IntervalEstimator.step_many`, replays): the same stages run once over a
batch of concatenated intervals (pulses located, M-waves measured and artifacts blanked for all of them
together, one filter call, the volitional methods fitted together), and only what is sequential by nature
stays a loop over pulses: the ``nlms`` weight update, the M-wave reference and the effort smoothing; the
spectral indices are recomputed at the same interval boundaries as one interval at a time. Both paths give
the same estimates (``tests/test_batch_estimator.py``): the fits use the same arithmetic; sums of many
samples (spectra, M-wave areas) may be added up in another order, a difference of rounding.

Windows are in seconds after the pulse; defaults suit surface EMG::

    0 .. blank_s                   artifact: never measured, bridged by a straight line before filtering
    mwave_window_s[0] .. [1]       M-wave measures; also where comb/gs/nlms fit their gains, unless
                                   fit_window_s gives that window apart
    post_start_s .. next pulse     the ``post`` method's volitional window
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import signal

from closedloop.errors import ConfigError
from closedloop.estimation import kernels
from closedloop.estimation.artifacts import blank_linear
from closedloop.estimation.filters import FilterChain, SOSFilter, bandpass_sos, notch_sos
from closedloop.estimation.segmenter import Interval
from closedloop.estimation.spectral import StreamingWelch, _band_indices
from closedloop.estimation.volitional import METHODS, SegmentBatch, SegmentPlan, VolitionalEstimator, _sum_sq
from closedloop.types import Estimate, StreamInfo

__all__ = ["EstimatorConfig", "IntervalEstimator", "fit_to_pulse_rate", "mvc_from_efforts"]

_NON_FINITE = "non-finite samples in interval"
_DOUBLET = "pulse inside the blanking window of the previous one: measured as one stimulus"


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
        Start and end of the M-wave window (its measures).
    fit_window_s:
        Start and end of the window on which ``comb``, ``gs`` and ``nlms`` fit their gains (where the evoked
        response they predict is); None: the M-wave window. :func:`fit_to_pulse_rate` shortens this one at
        high pulse rates, never the M-wave window (a shortened M-wave window would measure part of an M-wave).
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
        How far after its delivery time a pulse's artifact is looked for (0: trust the delivery time; for
        recordings without stimulation artifacts, e.g. amplifiers that blank in hardware).
    pulse_late_s:
        Where no artifact is within ``pulse_search_s``: how far after its time (within its interval) it is then
        looked for, with a warning when found: a command that reached the stimulator late (the machine stalled
        between stamping and sending it). 0: not looked for.
    pulse_lead_s:
        How far *before* its time a pulse's artifact is also looked for, within its interval: for replays of
        recordings whose pulse markers may be late (a replay's intervals then begin this long before each pulse,
        see :class:`~closedloop.estimation.segmenter.PulseSegmenter`). 0 (the default, live sessions): from the
        pulse's time on.
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
    fit_window_s: tuple[float, float] | None = None
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
    pulse_late_s: float = 0.020
    pulse_lead_s: float = 0.0
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
        if self.fit_window_s is not None and not (self.blank_s <= self.fit_window_s[0] < self.fit_window_s[1]):
            raise ConfigError(
                f"fit_window_s = {self.fit_window_s}: need blank_s <= start < end (seconds after the pulse)"
            )
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
        if self.pulse_search_s < 0 or self.pulse_lead_s < 0 or self.artifact_factor <= 1:
            raise ConfigError("pulse_search_s and pulse_lead_s must be >= 0 and artifact_factor > 1")
        if self.pulse_late_s and self.pulse_late_s < self.pulse_search_s:
            raise ConfigError(f"pulse_late_s = {self.pulse_late_s}: 0 (off) or at least pulse_search_s")
        if self.mwave_reference_pulses < 1:
            raise ConfigError(f"mwave_reference_pulses = {self.mwave_reference_pulses}: need >= 1")
        if self.mvc_uv is not None:
            mvc = np.atleast_1d(np.asarray(self.mvc_uv, dtype=float))
            if not (np.isfinite(mvc).all() and (mvc > 0).all()):
                raise ConfigError(f"mvc_uv = {self.mvc_uv}: must be positive numbers of microvolts")

    @property
    def fit_window(self) -> tuple[float, float]:
        """The window the prediction methods fit their gains on (s after the pulse)."""
        return self.mwave_window_s if self.fit_window_s is None else self.fit_window_s

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


def fit_to_pulse_rate(config: EstimatorConfig, stim_hz: float, chunk_s: float = 0.0) -> EstimatorConfig:
    """``config`` with its windows fitted to a ``1 / stim_hz`` pulse period (s); unchanged where they fit.

    The default gain-fit window (the M-wave window, 3-20 ms) fills a 50-Hz period. At higher rates it would
    not fit: the prediction methods could never run and every interval would fall back to ``post``, whose
    window starts after it, leaving no volitional estimate at all. The fit window's end is cut to 80 % of the
    period (never below 2 ms after its start), and ``min_volitional_s`` to 80 % of what remains after the
    blanking when a pulse lands up to ``chunk_s`` (one amplifier chunk) into its interval (never below 1 ms).
    The M-wave window itself is left as it is: where a period cannot hold it, M-wave measures are NaN with a
    warning rather than the measures of part of an M-wave.
    """
    from dataclasses import replace

    period = 1.0 / stim_hz
    f0, f1 = config.fit_window
    end = min(f1, max(0.8 * period, f0 + 0.002))
    room = period - chunk_s - config.blank_s
    min_vol = min(config.min_volitional_s, max(0.8 * room, 0.001))
    if end >= f1 and min_vol >= config.min_volitional_s:
        return config
    return replace(config, fit_window_s=(f0, end), min_volitional_s=min_vol)


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


@dataclass
class _Work:
    """An interval in progress (see :meth:`IntervalEstimator.lookahead`): its samples as received so far,
    channels first (``x``: raw, blanked once the pulse is located; ``y``: band-passed; ``resid``: nlms
    prediction error), how far each stage has got, and the filters' state before it began."""

    index: int
    samples: np.ndarray  # the interval's sample array (the same object from the first sample to the last)
    times: tuple[float, ...]  # the pulse times assumed
    n: int
    x: np.ndarray
    jump: np.ndarray
    filter_state: list
    n_in: int = 0
    n_filt: int = 0
    bad: bool = False
    located: list[int] | None = None  # the pulse offsets the blanking and filtering went by (guessed)
    y: np.ndarray | None = None
    resid: np.ndarray | None = None
    plan: SegmentPlan | None = None
    mwave: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # measured once its window was in


_new_object = object.__new__


def _frozen(cls: type, /, **fields):
    """The instance ``cls(**fields)`` of a frozen dataclass, given all its fields, made without its ``__init__``,
    which sets each field through ``object.__setattr__`` (an Estimate: 3 -> 0.7 us; a replay makes ~2000 a
    minute)."""
    obj = _new_object(cls)
    obj.__dict__.update(fields)
    return obj


class IntervalEstimator:
    """Measures M-wave, volitional EMG and fatigue indices in consecutive intervals of one EMG stream.

    Parameters
    ----------
    info:
        The EMG stream (rate, channels, units).
    config:
        Windows, method, filters, smoothing, control channel, MVC.
    compiled:
        Use the compiled kernels (:mod:`closedloop.estimation.kernels`) where numba is there: the same
        numbers, faster over many channels. Loading them takes about a second (longer the first time on a
        machine): for replays, not for a live loop that must answer from its first interval.
    """

    #: Channel-samples per internal batch of :meth:`step_many` (2 MiB per float64 working array): larger batches
    #: spread the per-batch work thinner, but arrays that outgrow the CPU's caches slow every pass over them
    #: (measured at 64 channels, 2048 Hz: 1 << 18 about 15 % faster than 1 << 17 and 1 << 20 slower again).
    batch_elements = 1 << 18
    #: Fewest intervals :meth:`step_many` processes as a batch: below, one :meth:`step` each is faster (a batch
    #: costs a fixed few hundred microseconds more; measured break-even about 4 intervals at 64 channels).
    min_batch = 5

    def __init__(self, info: StreamInfo, config: EstimatorConfig | None = None, *, compiled: bool = False) -> None:
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
        self._unit_scale = bool((self._scale == 1.0).all())  # then y * scale == y: skip the multiplication
        self._blank = round(cfg.blank_s * fs)
        self._m0 = round(cfg.mwave_window_s[0] * fs)
        self._m1 = round(cfg.mwave_window_s[1] * fs)
        self._pre = max(2, round(0.002 * fs))  # raw samples before a pulse that give the M-wave baseline
        self._latency_s = (np.arange(self._m1 - self._m0) + self._m0) / fs  # by sample in the M-wave window
        self._search = round(cfg.pulse_search_s * fs)
        self._lead = round(cfg.pulse_lead_s * fs) if self._search else 0
        self._late = round(cfg.pulse_late_s * fs) if self._search else 0
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
            (round(cfg.fit_window[0] * fs), round(cfg.fit_window[1] * fs)),
            round(cfg.post_start * fs),
            round(cfg.min_volitional_s * fs),
            cfg.history,
            cfg.nlms_mu,
            cfg.comb_scale,
        )
        #: The compiled kernels in use (None: numpy and scipy only).
        self.kernels = kernels.load() if compiled else None
        for f in filters:
            f.kernels = self.kernels
        self.volitional.kernels = self.kernels
        # only the bins of the band the indices are computed over (spectral_indices' rule) are kept
        self.welch = StreamingWelch(fs, n_ch, window_s=cfg.spectral_window_s, band_hz=self.band_hz, band_only=True)
        self.welch.kernels = self.kernels
        # Spectral indices describe the EMG, not our filters: divide the band-pass/notch response back out
        # (bins where the notches remove more than 90 % of the power are left out).
        h2 = np.ones(self.welch.freqs.shape[0])
        for f in filters:
            _, h = signal.sosfreqz(f.sos, worN=self.welch.freqs, fs=fs)
            h2 *= np.abs(h) ** 2
        self._psd_weight = np.where(h2 > 0.1, 1.0 / np.maximum(h2, 1e-12), 0.0)[:, None]
        f = self.welch.freqs
        self._band_f = (f, f**-1, f**5)
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
        self._tail = np.zeros((n_ch, 0))  # last raw samples (blanked) of the previous interval, channels first
        self._spectral = (np.full(n_ch, np.nan),) * 3
        self._welch_seen = 0
        self._spectral_every = max(1, round(cfg.spectral_update_s * fs))
        self._spectral_due = -1
        self._last_pulse_t = -math.inf
        # stream sample where the last pulse's evoked response ends (post_start_s after it): a pulse-free
        # interval's volitional window begins there at the earliest
        self._response_end = -(1 << 62)
        win = self.welch.window
        nps = win.shape[0]
        acf = signal.correlate(win, win)[nps - 1 :] / (win @ win)  # lag 0 .. nperseg - 1 (by FFT when long)
        lag = np.arange(nps)
        self._resp_cos = np.cos(2 * np.pi * np.outer(self.welch.freqs, lag) / fs) * acf  # (F, nperseg)
        # the running response of the prediction filters, as lag coefficients (see _response_psd_weight); row
        # nperseg collects the terms of lags out of range. Pulses queue their terms; they are added (decayed
        # to the time of need) when the spectral indices are next recomputed.
        self._resp_lag = np.zeros((nps + 1, n_ch))
        self._resp_used = np.zeros(nps, bool)
        self._resp_rows = np.zeros(0, np.int64)  # the lags pulses have used (the other rows are 0)
        self._resp_t = 0  # stream sample (counted from the start) at which _resp_lag holds
        self._resp_raw: list[tuple[np.ndarray, ...]] = []  # queued one by one: (end sample, lags, weights, valid)
        self._resp_terms: list[tuple[np.ndarray, ...]] = []  # queued as terms: (end sample, lag, value)
        self._resp_n = 0.0
        self._resp_any = False
        self._resp_tau = cfg.spectral_window_s * fs  # samples
        self._n_seen = 0  # samples estimated so far
        self._deferred: tuple | None = None  # an interval's spectral work, left for after the decision
        self._work: _Work | None = None  # the interval begun by lookahead()
        self._short_text: dict[int, str] = {}  # M-wave window warnings by samples after the pulse
        self._ramps: dict[int, np.ndarray] = {}  # blanking ramps by window length
        self._pairs: dict[int, tuple[np.ndarray, ...]] = {}  # response terms by number of lags

    def set_mvc(self, mvc_uv: float | np.ndarray) -> None:
        """Set the MVC reference (uV): one value for all channels or one per channel. NaN: no reference for that
        channel (its % MVC is NaN), allowed except for the control channel."""
        mvc = np.broadcast_to(np.asarray(mvc_uv, dtype=float), (self.info.n_channels,)).copy()
        c = self.config.control_channel
        if not (math.isfinite(mvc[c]) and mvc[c] > 0 and ((mvc > 0) | np.isnan(mvc)).all()):
            raise ConfigError(
                f"MVC reference {mvc_uv!r} must be positive microvolts for every channel (NaN: none, except for "
                f"the control channel {c})"
            )
        self.mvc_uv = mvc

    def reset_mwave_reference(self) -> None:
        """Take the next pulses as the M-wave reference of the relative fatigue indices."""
        self.mwave_ref_ptp = self.mwave_ref_area = None
        self._ref_ptp, self._ref_area = [], []

    def settle(self) -> None:
        """Do the work the last :meth:`step` left for later: the ``nlms`` weight step, the push of its
        volitional EMG into the Welch estimate and the spectral indices' update if one is due.

        A step returns as soon as the values a controller acts on are known; the live loop calls this after
        the pulse has been delivered (otherwise the next step does it first). The indices it computes appear
        in the next interval's estimate, whichever way it is called.
        """
        self.volitional.settle()  # the nlms weight step
        job, self._deferred = self._deferred, None
        if job is None:
            return
        y, lo, hi, bad, seg, n = job
        valid = np.zeros(n, bool)
        if not bad:
            valid[lo:hi] = True
        self.welch.step_channels_first(y, valid)
        self._track_response(seg, 0 if bad else hi - lo, n)
        self._update_spectral()

    # -- the step ---------------------------------------------------------------------------------------
    def lookahead(self, interval: Interval, n_received: int, pulse_times: Sequence[float] = ()) -> None:
        """Start on an interval before all of it has arrived (the live loop, after each chunk): the first
        ``n_received`` samples of ``interval`` (the rest of its arrays may be anything yet), with the pulses
        delivered into it so far.

        What does not depend on the samples still to come is done now: the channels-first copy, the jumps
        the artifact is located on, and, once the pulse's search window is in, its location (a guess: the
        interval's median jump is not known yet), the blanking, the band-pass and the ``nlms`` prediction of
        the samples received. :meth:`step` on the same interval then only adds the last samples, locates the
        pulse again on the whole interval and, should the result differ (or the pulses do), does it all
        again from the start. Its estimate is the same either way; only the work left for the end changes.
        """
        work = self._work_for(interval)
        if work is None:
            self.settle()
            work = self._work = self._begin(interval, pulse_times)
        elif work.times != tuple(pulse_times):
            return  # a pulse came since: what is done stays valid only up to its location; step decides
        self._advance(work, interval, min(max(n_received, work.n_in), work.n))

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
        times = tuple(pulse_times)
        work = self._work_for(interval)
        self._work = None
        if work is not None and work.times != times:  # begun on other pulses
            self._abandon(work)
            work = None
        if work is None:
            self.settle()
            work = self._begin(interval, times)
        n = work.n
        self._advance(work, interval, n)
        warnings: list[str] = [_NON_FINITE] if work.bad else []
        starts = self._locate_one(work, interval.timestamps, warnings)
        if work.located is not None and starts != work.located:  # the guess was wrong: from the start
            self._abandon(work)
            work = self._begin(interval, times)
            self._advance(work, interval, n)
        return self._finish(work, interval, starts, warnings, amplitude_ma)

    def _work_for(self, interval: Interval) -> _Work | None:
        """The work lookahead() began on ``interval``, if that is the interval it began; any other is undone."""
        work = self._work
        if work is not None and (work.samples is not interval.samples or work.index != interval.index):
            self._abandon(work)
            self._work = work = None
        return work

    def _begin(self, interval: Interval, times: Sequence[float]) -> _Work:
        """An interval's work, nothing done yet; the filters' state is kept to come back to."""
        n, n_ch = interval.samples.shape[0], self.info.n_channels
        return _Work(
            interval.index, interval.samples, tuple(times), n, np.empty((n_ch, n)), np.empty(n), self.filter.state()
        )

    def _abandon(self, work: _Work) -> None:
        """Undo what a work changed outside itself: the filters' state."""
        self.filter.set_state(work.filter_state)

    def _advance(self, work: _Work, interval: Interval, upto: int) -> None:
        """Bring ``work`` up to the interval's first ``upto`` samples: copy, jumps and, where the pulse is
        located (or there is none), blanking, band-pass and nlms prediction."""
        a = work.n_in
        x = work.x
        if upto > a:
            xs = x[:, a:upto]
            np.copyto(xs, interval.samples[a:upto].T)
            finite = np.isfinite(xs)
            if not finite.all():
                work.bad = True
                xs[~finite] = 0.0  # keeps the filter state finite; this interval's values are NaN
            self._jump_range(x, a, upto, work.jump)
            work.n_in = upto
        if work.located is None:
            if work.n_in < work.n:  # a guess, on the jumps so far; step() checks it on the whole interval
                starts = self._locate_one(work, interval.timestamps, [])
                if starts is None or len(starts) > 1:
                    return  # not in yet, or several pulses: all at the end
            else:
                return  # the whole interval: step() locates and finishes
            work.located = starts
            if starts:
                p = starts[0]
                if p + self._blank >= work.n_in or (p == 0 and not self._tail.shape[1]):
                    work.located = None  # the blanking's far end is not in yet (or has no left end)
                    return
                self._blank_one(x, starts)
                if self.config.method == "nlms":
                    work.plan = self.volitional.plan(p, work.n, interval.start_sample + p)
            work.y = np.empty_like(x)
            if work.plan is not None and work.plan.m:
                work.resid = np.zeros_like(x)
        self._filter_range(work, work.n_in)
        if work.located and work.mwave is None and work.located[0] + self._m1 <= work.n_in:
            work.mwave = self._mwave(x, work.located[0], [])  # its window is in (and not cut short)

    def _filter_range(self, work: _Work, upto: int) -> None:
        """Band-pass ``work.x`` up to sample ``upto`` into ``work.y`` (blanked first), then the nlms prediction
        error of what is new into ``work.resid``."""
        a = work.n_filt
        if upto <= a:
            return
        ya = np.array(work.x[:, a:upto])  # C-contiguous: the filter kernel's layout
        self.filter.step_channels_first(ya)
        if not self._unit_scale:
            ya *= self._scale[:, None]
        work.y[:, a:upto] = ya
        work.n_filt = upto
        plan = work.plan
        if plan is not None and plan.m:
            self.volitional.predict(plan, work.y, work.resid, max(a, plan.lo), min(upto, plan.hi))

    def _finish(
        self, work: _Work, interval: Interval, starts: list[int], warnings: list[str], amplitude_ma: float
    ) -> Estimate:
        """The estimate of an interval whose samples are all in ``work`` and whose pulses are at ``starts``."""
        cfg = self.config
        x, ts, n, bad = work.x, interval.timestamps, work.n, work.bad
        n_ch = x.shape[0]
        p = starts[0] if starts else -1
        ptp = area = latency = np.full(n_ch, np.nan)
        # measured on the raw samples: a single pulse's blanking ends before its M-wave window begins
        measures = None
        if p >= 0 and not bad:
            measures = work.mwave if work.mwave is not None else self._mwave(x, p, warnings)
        if measures is not None:
            ptp, area, latency = measures
            self._reference(ptp, area, amplitude_ma)
        if work.located is None:
            self._blank_one(x, starts)
            work.y = np.empty_like(x)
        self._tail = x[:, n - min(self._pre, n) :].copy()
        self._filter_range(work, n)
        y = work.y
        seg: SegmentBatch | None = None
        if p < 0:
            lo, hi, method = self._after_response(interval.start_sample, n), n, "window"
            if ts[-1] - self._last_pulse_t > cfg.history_reset_s:
                self.volitional.reset()  # segments from before a pause are no reference for the next pulses
        else:
            if work.plan is not None:  # predicted as the samples came
                seg = self.volitional.commit(work.plan, y[:, p:n])
                if work.resid is not None:
                    y = work.resid
            else:
                seg = self.volitional.segment_in_place(y, p, n, interval.start_sample + p)
            lo, hi, method = int(seg.lo[0]), int(seg.hi[0]), seg.method[0]
            if bad:  # its non-finite samples (zeroed) are no reference for the next pulses' predictions
                self.volitional.reset()
            self._last_pulse_t = float(ts[p])
            self._response_end = interval.start_sample + starts[-1] + self.volitional.post_n
            if method != cfg.method and cfg.method != "post":
                warnings.append(f"{cfg.method} needs a previous pulse segment: used post")
        self._deferred = (y, lo, hi, bad, seg, n)  # the spectral work: after the decision (see settle)
        if hi - lo >= self.volitional.min_n and not bad:
            v = y[:, lo:hi]
            effort = np.sqrt(np.einsum("ij,ij->i", v, v) / (hi - lo))
        else:
            effort = np.full(n_ch, np.nan)
        if np.isnan(effort).all() and not bad:
            warnings.append(f"volitional window shorter than {cfg.min_volitional_s * 1e3:.1f} ms ({method})")
        if bad:
            effort = ptp = area = latency = np.full(n_ch, np.nan)
        return self._estimate(
            interval,
            float(ts[p]) if p >= 0 else float(ts[0]),
            amplitude_ma if p >= 0 else math.nan,
            effort,
            ptp,
            area,
            latency,
            tuple(warnings),
            p >= 0,
        )

    def _locate_one(self, work: _Work, ts: np.ndarray, warnings: list[str]) -> list[int] | None:
        """Sample offsets of the pulses of ``work.times`` in the interval, located on their artifacts,
        doublets merged; None while a pulse or its search window is beyond the samples in.

        A pulse's delivery time says roughly where it is; a stimulator (or a simulated device working in
        blocks) may apply it a few samples later. Each pulse is placed on the first sample within
        ``pulse_search_s`` after its nominal time whose jump from the previous sample stands out (more than
        ``artifact_factor`` times the interval's median jump): the artifact's onset, which comes before any
        M-wave. Without such a jump there, the first one up to ``pulse_late_s`` after it (a command that reached
        the stimulator late: a machine that stalled between stamping and sending it; said in a warning), else the
        nominal sample is kept (set ``pulse_search_s=0`` for stimulators that leave no artifact). The jump into
        the first sample is from the previous interval's last sample as blanked. With part of the interval in,
        the median is that of the part and only the search window is looked at: a guess.
        """
        if not work.times:
            return []
        n, n_in = work.n, work.n_in
        complete = n_in == n
        idx = np.searchsorted(ts[:n_in], np.asarray(work.times, dtype=float) - 0.5 / self._fs).tolist()
        if not complete and any(i >= n_in for i in idx):
            return None  # a pulse not in yet
        idx = [i for i in idx if i < n]
        if not idx:
            return []
        if self._search:
            if not complete and max(idx) + self._search + 1 > n_in:
                return None
            jump = work.jump[:n_in]
            half = n_in // 2
            floor = self.config.artifact_factor * float(np.partition(jump, half)[half]) + 1e-12
            above = jump > floor
            for k, i in enumerate(idx):
                a = max(i - self._lead, 0)
                hit = int(above[a : i + self._search + 1].argmax())  # the first jump above the floor, if any
                if above[a + hit]:
                    idx[k] = a + hit
                elif complete and self._late > self._search:  # none: a pulse applied late, its artifact later
                    later = above[i + self._search + 1 : i + self._late + 1]
                    hit = int(later.argmax()) if later.size else 0
                    if later.size and later[hit]:
                        idx[k] = i + self._search + 1 + hit
                        warnings.append(self._late_text(idx[k] - i))
        if len(idx) == 1:
            return idx
        return self._merge(np.sort(idx), warnings)

    def _jump_range(self, x: np.ndarray, a: int, b: int, out: np.ndarray) -> None:
        """``out[a:b]``: the largest jump over channels into each of the samples ``a .. b-1`` of ``(C, n)``
        raw samples (into the first one from the previous interval's last sample, as blanked)."""
        if b - a > 1:
            d = np.subtract(x[:, a + 1 : b], x[:, a : b - 1])
            np.abs(d, out=d)
            d.max(axis=0, out=out[a + 1 : b])
        if a:
            out[a] = np.abs(x[:, a] - x[:, a - 1]).max()
        else:
            out[0] = np.abs(x[:, 0] - self._tail[:, -1]).max() if self._tail.shape[1] else 0.0

    def _mwave(self, x: np.ndarray, p: int, warnings: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Peak-to-peak (uV), rectified area (uV*s) and latency (s) of the M-wave after the pulse at ``p``
        (raw ``(C, n)`` samples before blanking), baseline removed: the mean of the raw samples just before
        the pulse (those of the previous interval, as blanked, for a pulse on the first sample). A window the
        next pulse cuts short is measured if at least half of it is there (None otherwise)."""
        n = x.shape[1]
        m0, m1 = p + self._m0, p + self._m1
        if m1 > n:
            text = self._window_text(n - p)
            if n - m0 < (self._m1 - self._m0) / 2:
                warnings.append(f"interval too short for the M-wave window: {text}")
                return None
            warnings.append(f"M-wave window truncated by the next pulse: {text}")
            m1 = n
        pre = x[:, max(0, p - self._pre) : p] if p > 0 else self._tail
        k = pre.shape[1]
        base = np.add.reduce(pre, axis=1) / k if k else x[:, m0]
        seg = x[:, m0:m1] - base[:, None]
        ptp = seg.max(axis=1) - seg.min(axis=1)
        dev = np.abs(seg, out=seg)
        area = np.add.reduce(dev, axis=1) / self._fs
        latency = self._latency_s[np.argmax(dev, axis=1)]
        if not self._unit_scale:
            ptp *= self._scale
            area *= self._scale
        return ptp, area, latency

    def _blank_one(self, x: np.ndarray, starts: list[int]) -> None:
        """Bridge the artifacts of one interval ``(C, n)`` by straight lines, in place: what
        :func:`~closedloop.estimation.artifacts.blank_linear` does, written out for the usual single window
        between two samples."""
        nb = self._blank
        if not starts or not nb:
            return
        a = starts[0]
        b = min(a + nb, x.shape[1])
        if len(starts) > 1 or b == x.shape[1] or (a == 0 and not self._tail.shape[1]):
            blank_linear(x.T, starts, nb, before=self._tail[:, -1] if self._tail.shape[1] else None)
            return
        left = x[:, a - 1] if a > 0 else self._tail[:, -1]
        x[:, a:b] = left[:, None] + (x[:, b] - left)[:, None] * self._ramp(b - a)

    def _after_response(self, start_sample: int, n: int) -> int:
        """Where the volitional window of a pulse-free interval of ``n`` samples beginning at stream sample
        ``start_sample`` begins: after the last pulse's evoked response (``post_start_s`` after it), which runs on
        into this interval when that pulse came late in its own (a live loop catching up after a stall; a
        grid replay's irregular pulses). 0 usually; ``n``: none of it is free of the response."""
        return min(max(self._response_end - start_sample, 0), n)

    def _ramp(self, length: int) -> np.ndarray:
        """``(1 .. length) / (length + 1)``: where a bridged sample lies between its window's ends."""
        ramp = self._ramps.get(length)
        if ramp is None:
            ramp = self._ramps[length] = np.arange(1, length + 1, dtype=np.float64) / (length + 1)
        return ramp

    def _track_response(self, seg: SegmentBatch | None, n_valid: int, n: int) -> None:
        """The running spectral response of the residual (see :meth:`_response_psd_weight`) after one
        interval of ``n`` samples, ``n_valid`` of them volitional, filtered by the prediction of ``seg``
        (None or ``post``: unfiltered)."""
        self._n_seen += n
        self._resp_n *= math.exp(-n / self._resp_tau)
        if not n_valid:
            return
        self._resp_n += n_valid
        if seg is not None and seg.n_past[0]:
            self._resp_any = True
            self._resp_raw.append((np.array([self._n_seen]), seg.lags, seg.weights, np.array([n_valid])))
            if len(self._resp_raw) > 64:  # bounded, whether or not the indices get recomputed
                self._flush_response(self._n_seen)

    def _update_spectral(self) -> None:
        """Recompute the spectral indices if the Welch estimate has new segments and a new update period of
        the stream has begun (sample-counted, so the same whatever the interval lengths and chunking)."""
        w = self.welch
        due = w.n_samples // self._spectral_every
        if w.segments_pushed != self._welch_seen and w.n_segments >= w.min_segments and due != self._spectral_due:
            self._recompute_spectral(due, self._n_seen)

    def _estimate(
        self,
        interval: Interval,
        t_start: float,
        amplitude_ma: float,
        effort: np.ndarray,
        ptp: np.ndarray,
        area: np.ndarray,
        latency: np.ndarray,
        warnings: tuple[str, ...],
        has_pulse: bool,
    ) -> Estimate:
        c = self.config.control_channel
        e = float(effort[c])
        self._smooth([e], [interval.samples.shape[0]])
        mvc = self.mvc_uv
        pct = self.effort_smooth_uv / mvc[c] * 100.0 if mvc is not None else math.nan
        ref_p, ref_a = self.mwave_ref_ptp, self.mwave_ref_area
        nan = np.full_like(ptp, np.nan)
        mdf, mnf, fi = self._spectral
        # a flat channel's references are 0 (or its M-wave is): no ratio, and no numpy warning on the console
        with np.errstate(divide="ignore", invalid="ignore"):
            pct_k = effort / mvc * 100.0 if mvc is not None else np.full_like(effort, np.nan)
            rel_p = ptp / ref_p if ref_p is not None else nan
            rel_a = area / ref_a if ref_a is not None else nan
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
            channel_effort_pct_mvc=pct_k,
            channel_mwave_ptp_rel=rel_p,
            channel_mwave_area_rel=rel_a,
            channel_mdf_hz=mdf,
            channel_mnf_hz=mnf,
            channel_fi_nsm5=fi,
            warnings=warnings,
            has_pulse=has_pulse,
        )

    def step_many(
        self,
        intervals: Sequence[Interval],
        pulse_times: Sequence[Sequence[float]] | None = None,
        amplitudes_ma: Sequence[float] | None = None,
    ) -> list[Estimate]:
        """Estimate consecutive intervals; the same results as calling :meth:`step` on each in turn.

        The intervals (with pulses or without, in any mix) are processed in batches of about
        :attr:`batch_elements` channel-samples (as many as that makes, of about equal size), each stage
        vectorised over the whole batch (see the module docstring). ``pulse_times`` and ``amplitudes_ma``
        give, per interval, what :meth:`step` takes.
        """
        k = len(intervals)
        times = list(pulse_times) if pulse_times is not None else [()] * k
        amps = list(amplitudes_ma) if amplitudes_ma is not None else [math.nan] * k
        # batches of about batch_elements channel-samples, as even as the interval boundaries allow
        ends = np.cumsum([iv.samples.shape[0] for iv in intervals])
        n_batches = max(1, round(int(ends[-1]) * self.info.n_channels / self.batch_elements)) if k else 0
        cuts = np.searchsorted(ends, ends[-1] * np.arange(1, n_batches) / n_batches) + 1 if k else []
        bounds = sorted({0, k, *(int(c) for c in cuts if 0 < c < k)})
        out: list[Estimate] = []
        for i, j in itertools.pairwise(bounds):
            if j - i < self.min_batch:  # a few intervals: the per-interval path is the same, with less bookkeeping
                out.extend(self.step(intervals[m], times[m], amps[m]) for m in range(i, j))
            else:
                out.extend(self._batch(intervals[i:j], times[i:j], amps[i:j]))
        return out

    def _batch(
        self, ivs: Sequence[Interval], times: Sequence[Sequence[float]], amps: Sequence[float]
    ) -> list[Estimate]:
        """Estimates of consecutive intervals, every stage over all of them at once (see :meth:`step`)."""
        if self._work is not None:  # begun by lookahead(): done again here, with the others
            self._abandon(self._work)
            self._work = None
        self.settle()  # a step before may have left its spectral work
        cfg = self.config
        n_iv = len(ivs)
        lens = np.array([iv.samples.shape[0] for iv in ivs], dtype=np.int64)
        offs = np.zeros(n_iv, np.int64)
        np.cumsum(lens[:-1], out=offs[1:])
        n_all = int(offs[-1] + lens[-1])
        x = self._raw(ivs, n_all)  # (C, N) channels first
        warns: list[list[str]] = [[] for _ in range(n_iv)]
        bad = np.zeros(n_iv, bool)
        finite = np.isfinite(x)  # (a sum would be as quick, but overflows, with a warning, at 1e308)
        if not finite.all():
            bad = np.logical_or.reduceat(~finite.all(axis=0), offs)
            x[~finite] = 0.0  # keeps the filter state finite; these intervals' values are NaN
            for k in np.flatnonzero(bad).tolist():
                warns[k].append(_NON_FINITE)

        first, multi = self._locate(x, ivs, times, offs, lens, warns)
        measured, window, inside = self._mwave_windows(x, first, offs, lens, bad, warns)
        self._blank_all(x, first, multi, offs, lens)
        ptp, area, latency = self._mwave_measures(x, measured, window, inside, first, offs, lens)
        self._tail = x[:, n_all - min(self._pre, int(lens[-1])) :].copy()
        y = self.filter.step_channels_first(x)
        if not self._unit_scale:
            y *= self._scale[:, None]

        # volitional EMG: pulse segments in runs without a history reset between them, windows as they are
        has = first >= 0
        lo, hi = offs.copy(), offs + lens  # per interval: where its volitional signal is (windows: all of it)
        self._responses_end(ivs, first, multi, offs, lens, lo)
        method = ["window"] * n_iv
        resp: list[tuple[np.ndarray, SegmentBatch]] = []  # (intervals, their segment batch)
        t_first = [math.nan] * n_iv
        for run in self._segment_runs(ivs, first, t_first, bad):
            if run is None:
                self.volitional.reset()  # segments from before a pause are no reference for the next pulses
                continue
            kk = np.asarray(run)
            b = self.volitional.segments(
                y, offs[kk] + first[kk], offs[kk] + lens[kk], np.array([ivs[k].start_sample for k in run]) + first[kk]
            )
            lo[kk], hi[kk] = b.lo, b.hi
            for k, m in zip(run, b.method, strict=True):
                method[k] = m
                if m != cfg.method and cfg.method != "post":
                    warns[k].append(f"{cfg.method} needs a previous pulse segment: used post")
            resp.append((kk, b))
        n_valid = np.where(bad, 0, hi - lo)
        effort = self._range_rms(y, lo, hi)
        effort[(n_valid < self.volitional.min_n) | bad] = np.nan
        for k in np.flatnonzero(np.isnan(effort).all(axis=1) & ~bad).tolist():
            warns[k].append(f"volitional window shorter than {cfg.min_volitional_s * 1e3:.1f} ms ({method[k]})")
        valid = np.zeros(n_all + 1, np.int64)  # volitional samples of the intervals without bad samples
        np.add.at(valid, lo[~bad], 1)
        np.add.at(valid, hi[~bad], -1)
        valid = np.cumsum(valid[:-1]) > 0
        before = self._spectral
        spectral = [before, *self._spectra(y, valid, lens, n_valid, resp)[:-1]]  # each in force at its start

        # M-wave reference (sequential: the first pulses at each intensity), relative M-wave indices
        ref_p, ref_a = self._references(measured, ptp, area, amps, n_iv)
        amps_out = [float(amps[k]) if has[k] else math.nan for k in range(n_iv)]
        return self._estimates(ivs, first, t_first, amps_out, effort, ptp, area, latency, ref_p, ref_a, spectral, warns)

    # -- stages of a batch --------------------------------------------------------------------------------
    def _raw(self, ivs: Sequence[Interval], n_all: int) -> np.ndarray:
        """The intervals' samples one after the other as a ``(C, N)`` C-contiguous float64 copy, channels first
        (blanked and filtered in place). A file's chunks are channels-first in memory already (transposed
        views of what the reader read): then each interval is a plain copy of rows."""
        x = np.empty((self.info.n_channels, n_all))
        at = 0
        for iv in ivs:
            n = iv.samples.shape[0]
            x[:, at : at + n] = iv.samples.T
            at += n
        return x

    def _locate(
        self,
        x: np.ndarray,
        ivs: Sequence[Interval],
        times: Sequence[Sequence[float]],
        offs: np.ndarray,
        lens: np.ndarray,
        warns: list[list[str]],
    ) -> tuple[np.ndarray, dict[int, list[int]]]:
        """Sample offsets of the pulses in each interval, located on their artifacts, doublets merged.

        A pulse's delivery time says roughly where it is; a stimulator (or a simulated device working in
        blocks) may apply it a few samples later. Each pulse is placed on the first sample within
        ``pulse_search_s`` after its nominal time whose jump from the previous sample stands out (more than
        ``artifact_factor`` times the interval's median jump): the artifact's onset, which comes before any
        M-wave. Without such a jump the nominal sample is kept (set ``pulse_search_s=0`` for stimulators
        that leave no artifact). The jump into an interval's first sample is from the previous interval's
        last sample as blanked.

        Returns the first pulse per interval (-1: none) and, for intervals with several, all of them.
        """
        n_iv = len(ivs)
        first = np.full(n_iv, -1, np.int64)
        multi: dict[int, list[int]] = {}
        counts = np.array([len(t) for t in times])
        if not counts.any():
            return first, multi
        with_times = np.flatnonzero(counts)
        owner = np.repeat(with_times, counts[with_times])
        t = np.array([t for k in with_times.tolist() for t in times[k]], dtype=float) - 0.5 / self._fs
        ts = np.concatenate([iv.timestamps for iv in ivs])
        if bool(np.all(ts[1:] >= ts[:-1])):  # sorted: one search over all intervals gives the same
            nominal = np.maximum(np.searchsorted(ts, t) - offs[owner], 0)
        else:
            nominal = np.concatenate([np.searchsorted(ivs[k].timestamps, t[owner == k]) for k in with_times.tolist()])
        keep = nominal < lens[owner]
        owner, nominal = owner[keep], nominal[keep]
        if not owner.size:
            return first, multi
        n_warn = [len(w) for w in warns]
        loc, jump = nominal, None
        if self._search:
            jump = self._jumps(x)
            ks, at = np.unique(owner, return_inverse=True)
            floor = self._floors(jump, offs[ks], lens[ks])[at]
            loc = self._refine(jump, offs[owner], lens[owner], nominal, floor)
            self._late_warnings(loc - nominal, owner, warns)
        per = np.bincount(owner, minlength=n_iv)
        single = per[owner] == 1
        first[owner[single]] = loc[single]
        for k in np.flatnonzero(per > 1).tolist():
            self._set_starts(self._merge(np.sort(loc[owner == k]), warns[k]), first, multi, k)
        if jump is None or not self._blank:
            return first, multi
        # An artifact blanked up to the end of an interval changes the next interval's first jump (from the
        # blanked sample): relocate the next interval's pulses with it (rare: very short intervals).
        held = self._ends_held(first, multi, lens)
        for k in range(int(np.argmax(held[:-1])) + 1, n_iv) if held[:-1].any() else ():
            if not (held[k - 1] and per[k]):  # (held as relocated: in order)
                continue
            jk = jump[offs[k] : offs[k] + lens[k]].copy()
            jk[0] = np.abs(x[:, offs[k]] - self._held_value(x, k - 1, first, multi, offs, lens, held)).max()
            mine = owner == k
            floor = self._floors(jk, np.zeros(1, np.int64), lens[k : k + 1])
            loc_k = self._refine(jk, np.zeros(1, np.int64), lens[k : k + 1], nominal[mine], floor)
            del warns[k][n_warn[k] :]
            self._late_warnings(loc_k - nominal[mine], np.full(loc_k.size, k), warns)
            self._set_starts(self._merge(np.sort(loc_k), warns[k]), first, multi, k)
            held[k] = self._ends_held(first[k : k + 1], {0: multi[k]} if k in multi else {}, lens[k : k + 1])[0]
        return first, multi

    def _late_text(self, after: int) -> str:
        """The warning for a pulse whose artifact came ``after`` samples after its time, past the search window."""
        return f"pulse applied late: its artifact {after / self._fs * 1e3:.1f} ms after its time"

    def _late_warnings(self, moved: np.ndarray, owner: np.ndarray, warns: list[list[str]]) -> None:
        """Warn of the pulses located past their search window (``moved`` samples after their time)."""
        for r in np.flatnonzero(moved > self._search).tolist():
            warns[int(owner[r])].append(self._late_text(int(moved[r])))

    def _jumps(self, x: np.ndarray) -> np.ndarray:
        """``(N,)`` largest jump over channels into each sample of ``(C, N)`` raw samples (into the first one
        from the previous interval's last sample, as blanked)."""
        jump = np.empty(x.shape[1])
        if self.kernels is not None:
            self.kernels.largest_jumps(x, jump)
            self._jump_range(x, 0, 1, jump)  # the first one, from the previous interval
        else:
            self._jump_range(x, 0, x.shape[1], jump)
        return jump

    def _floors(self, jump: np.ndarray, start: np.ndarray, n: np.ndarray) -> np.ndarray:
        """Artifact threshold per interval: ``artifact_factor`` times its median jump (upper median)."""
        half = n // 2
        if n.size == 1:
            med = np.partition(jump[start[0] : start[0] + n[0]], half[0])[half]
        elif int(n.max()) * n.size <= 4 * int(n.sum()):  # similar lengths: one sort of the padded rows
            cols = np.arange(int(n.max()))
            rows = np.where(cols < n[:, None], jump[np.minimum(start[:, None] + cols, jump.size - 1)], np.inf)
            rows.sort(axis=1)
            med = rows[np.arange(n.size), half]
        else:
            med = np.array([np.partition(jump[a : a + m], m // 2)[m // 2] for a, m in zip(start, n, strict=True)])
        return self.config.artifact_factor * med + 1e-12

    def _refine(
        self, jump: np.ndarray, start: np.ndarray, n: np.ndarray, loc: np.ndarray, floor: np.ndarray
    ) -> np.ndarray:
        """Each pulse moved to the first sample from ``pulse_lead_s`` earlier to ``pulse_search_s`` later (in its
        interval) whose jump exceeds its interval's ``floor``, else to the first one up to ``pulse_late_s`` after it
        (in its interval); kept where there is none."""
        a = np.maximum(loc - self._lead, 0)
        at = (start + a)[:, None] + np.arange(loc.size and int((loc - a).max()) + self._search + 1)
        stop = start + np.minimum(n, loc + self._search + 1)  # each search's end, within the interval
        above = (jump[np.minimum(at, jump.size - 1)] > floor[:, None]) & (at < stop[:, None])
        found = above.any(axis=1)
        out = np.where(found, a + above.argmax(axis=1), loc)
        if self._late <= self._search:
            return out
        # none there: a pulse applied late, its artifact up to pulse_late_s after its time (rare: one by one)
        start, n, floor = (np.broadcast_to(v, loc.shape) for v in (start, n, floor))
        for r in np.flatnonzero(~found & (loc + self._search + 1 < n)).tolist():
            b = int(start[r] + loc[r] + self._search + 1)
            later = jump[b : start[r] + min(n[r], loc[r] + self._late + 1)] > floor[r]
            hit = int(later.argmax())
            if later[hit]:
                out[r] = b - start[r] + hit
        return out

    def _merge(self, loc: np.ndarray, warns: list[str]) -> list[int]:
        """The pulses located in one interval (sorted), a pulse inside the blanking window of the previous one
        merged with it (a doublet: one stimulus); the first opens the interval."""
        starts: list[int] = []
        for i in loc.tolist():
            if starts and i - starts[-1] < max(self._blank, 1):
                warns.append(_DOUBLET)
                continue
            starts.append(i)
        if len(starts) > 1:
            warns.append(f"{len(starts)} pulses in one interval: the first opens it")
        return starts

    def _set_starts(self, starts: list[int], first: np.ndarray, multi: dict[int, list[int]], k: int) -> None:
        """Record interval ``k``'s merged pulses: the first, and all of them if there are several."""
        first[k] = starts[0]
        if len(starts) > 1:
            multi[k] = starts
        else:
            multi.pop(k, None)

    def _ends_held(self, first: np.ndarray, multi: dict[int, list[int]], lens: np.ndarray) -> np.ndarray:
        """Per interval: does an artifact's blanking reach its last sample (which then holds a value)?"""
        last = first.copy()
        for k, starts in multi.items():
            last[k] = starts[-1]
        return (last >= 0) & (last + self._blank >= lens) & (self._blank > 0)

    def _held_value(
        self,
        x: np.ndarray,
        k: int,
        first: np.ndarray,
        multi: dict[int, list[int]],
        offs: np.ndarray,
        lens: np.ndarray,
        held: np.ndarray,
    ) -> np.ndarray:
        """The blanked value of interval ``k``'s last sample, which its last blanking window holds: the
        sample before that window (before blanking, as blank_linear draws it), or the value before the
        interval when the window starts on its first sample."""
        while True:
            starts = multi.get(k, [int(first[k])])
            i = len(starts) - 1
            while i > 0 and starts[i] <= starts[i - 1] + self._blank:  # windows that touch are one
                i -= 1
            if starts[i] > 0:
                return x[:, offs[k] + starts[i] - 1]
            if k == 0:
                return self._tail[:, -1] if self._tail.shape[1] else np.zeros(x.shape[0])
            k -= 1
            if not held[k]:
                return x[:, offs[k] + lens[k] - 1]

    def _mwave_windows(
        self,
        x: np.ndarray,
        first: np.ndarray,
        offs: np.ndarray,
        lens: np.ndarray,
        bad: np.ndarray,
        warns: list[list[str]],
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The raw M-wave windows of the intervals' first pulses, cut from the ``(C, N)`` samples before
        blanking: ``(measured intervals, (C, W, P) windows, (W, P) samples inside the interval)``. A window the
        next pulse cuts short is measured if at least half of it is there (the rest repeats its first sample,
        which changes no extreme)."""
        kk = np.flatnonzero((first >= 0) & ~bad)
        p, n = first[kk], lens[kk]
        width = self._m1 - self._m0
        cut = p + self._m1 > n
        too_short = cut & (n - (p + self._m0) < width / 2)
        for k, after, short in zip(kk[cut].tolist(), (n - p)[cut].tolist(), too_short[cut].tolist(), strict=True):
            text = self._window_text(after)
            if short:
                warns[k].append(f"interval too short for the M-wave window: {text}")
            else:
                warns[k].append(f"M-wave window truncated by the next pulse: {text}")
        measured = kk[~too_short]
        a = offs[measured] + first[measured] + self._m0
        at = a + np.arange(width)[:, None]  # (W, P): reductions over W then run along the pulses
        inside = at < offs[measured] + lens[measured]
        window = np.take(x, np.where(inside, at, a), axis=1)
        return measured, window, inside

    def _blank_all(
        self, x: np.ndarray, first: np.ndarray, multi: dict[int, list[int]], offs: np.ndarray, lens: np.ndarray
    ) -> None:
        """Bridge every artifact by a straight line, in place: what
        :func:`~closedloop.estimation.artifacts.blank_linear` does per interval, with the previous interval's
        last sample (as blanked) before it."""
        nb = self._blank
        if nb == 0 or not (first >= 0).any():
            return
        held = self._ends_held(first, multi, lens)
        # one window per interval with one pulse (the rule) vectorised; where a window runs to the end of its
        # interval, starts on the first sample of the first interval ever, or follows a held end, and for
        # intervals with several pulses: blank_linear itself, interval by interval, after the others
        ks = np.flatnonzero(first >= 0)
        a = first[ks]
        b = np.minimum(a + nb, lens[ks])
        prev_held = np.zeros(ks.size, bool)
        prev_held[ks > 0] = held[ks[ks > 0] - 1]
        no_before = (ks == 0) & (self._tail.shape[1] == 0)
        simple = (b < lens[ks]) & ~((a == 0) & (prev_held | no_before))
        if multi:
            simple[np.isin(ks, list(multi))] = False
        g, m = offs[ks[simple]] + a[simple], (b - a)[simple]
        if g.size:
            left = np.take(x, g - 1, axis=1)  # (C, P)
            if g[0] == 0:
                left[:, 0] = self._tail[:, -1]
            step = np.take(x, g + m, axis=1) - left
            flat = x.reshape(-1)  # written through flat indices, channel by channel (cache friendly)
            rows = np.arange(x.shape[0])[:, None, None] * x.shape[1]
            lengths = np.unique(m).tolist()
            for length in lengths:
                sel = m == length if len(lengths) > 1 else slice(None)
                at = rows + (g[sel][:, None] + np.arange(length))
                flat[at.ravel()] = (left[:, sel, None] + step[:, sel, None] * self._ramp(length)).ravel()
        for k in ks[~simple].tolist():
            before = x[:, offs[k] - 1] if k > 0 else (self._tail[:, -1] if self._tail.shape[1] else None)
            blank_linear(x[:, offs[k] : offs[k] + lens[k]].T, multi.get(k, [int(first[k])]), nb, before=before)

    def _mwave_measures(
        self,
        x: np.ndarray,
        measured: np.ndarray,
        window: np.ndarray,
        inside: np.ndarray,
        first: np.ndarray,
        offs: np.ndarray,
        lens: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(K, C)`` peak-to-peak (uV), rectified area (uV*s) and latency (s) of the M-waves (NaN where
        none), baseline removed: the mean of the raw samples just before the pulse (those of the previous
        interval, as blanked, for a pulse on an interval's first sample). ``window``: ``(C, W, P)``."""
        n_iv, n_ch = first.shape[0], x.shape[0]
        ptp, area, latency = (np.full((n_iv, n_ch), np.nan) for _ in range(3))
        if not measured.size:
            return ptp, area, latency
        pre = self._pre
        p = first[measured]
        g = offs[measured] + p
        lower = np.where(p > 0, offs[measured], offs[measured] - np.minimum(pre, lens[np.maximum(measured - 1, 0)]))
        at = g + np.arange(-pre, 0)[:, None]  # (pre, P)
        use = at >= lower
        base = (np.take(x, np.maximum(at, 0), axis=1) * use).sum(axis=1) / use.sum(axis=0)  # (C, P)
        if measured[0] == 0 and p[0] == 0:  # the first interval's pulse on its first sample: the stored tail
            base[:, 0] = self._tail.mean(axis=1) if self._tail.shape[1] else window[:, 0, 0]
        if self.kernels is not None:  # the same arithmetic in one pass over the windows
            span, total = out = np.empty((2, n_ch, measured.size))
            first_max = np.empty((n_ch, measured.size), np.int64)
            self.kernels.mwave_measures(window, inside.astype(np.float64), base, out, first_max)
        else:
            seg = window - base[:, None, :]  # (C, W, P): reductions over W run along the pulses
            top, bottom = seg.max(axis=1), seg.min(axis=1)
            span = top - bottom
            dev = np.abs(seg, out=seg)
            # latency: the first sample of the largest deflection, found as the largest descending index among the
            # samples that reach it (argmax along an axis that is not the last is a slow copy in numpy)
            width = seg.shape[1]
            down = np.arange(width - 1, -1, -1, dtype=np.int8 if width <= 127 else np.int32)[:, None]
            first_max = (width - 1) - ((dev == np.maximum(top, -bottom)[:, None, :]) * down).max(axis=1)
            if not inside.all():  # windows the next pulse cuts short: without the repeats
                dev *= inside
            total = dev[:, 0].copy()  # summed one sample after the other whatever the shapes (as the kernel)
            for w in range(1, width):
                total += dev[:, w]
        ptp[measured] = span.T * self._scale
        latency[measured] = (first_max.T + self._m0) / self._fs
        area[measured] = total.T / self._fs * self._scale
        return ptp, area, latency

    def _responses_end(
        self,
        ivs: Sequence[Interval],
        first: np.ndarray,
        multi: dict[int, list[int]],
        offs: np.ndarray,
        lens: np.ndarray,
        lo: np.ndarray,
    ) -> None:
        """The pulse-free intervals' volitional windows begin after the last pulse's evoked response
        (:meth:`_after_response`, for all of them at once): sets their ``lo`` and the end carried on."""
        last = first.copy()
        for k, starts in multi.items():
            last[k] = starts[-1]
        start = np.array([iv.start_sample for iv in ivs], dtype=np.int64)
        ends = np.where(last >= 0, start + last + self.volitional.post_n, -(1 << 62))
        # the end of the response before each interval: later pulses end later, so the running maximum
        before = np.maximum.accumulate(np.concatenate(([self._response_end], ends)))
        free = np.flatnonzero(last < 0)
        lo[free] += np.clip(before[free] - start[free], 0, lens[free])
        self._response_end = int(before[-1])

    def _segment_runs(
        self, ivs: Sequence[Interval], first: np.ndarray, t_first: list[float], bad: np.ndarray
    ) -> list[list[int] | None]:
        """The pulse intervals in runs that share the volitional history, and None where it is reset: after a
        pause (a pulse-free interval ending more than ``history_reset_s`` after the last pulse) and after a
        pulse interval with non-finite samples (``bad``: zeroed, no reference for the next predictions). Fills
        ``t_first`` with the time of each interval's first pulse."""
        runs: list[list[int] | None] = []
        run: list[int] = []
        last = self._last_pulse_t
        reset_s = self.config.history_reset_s
        for k, (p, b) in enumerate(zip(first.tolist(), bad.tolist(), strict=True)):
            ts = ivs[k].timestamps
            if p >= 0:
                run.append(k)
                last = t_first[k] = float(ts[p])
                if b:
                    runs += [run, None]
                    run = []
            elif ts[-1] - last > reset_s:
                if run:
                    runs.append(run)
                    run = []
                if not runs or runs[-1] is not None:
                    runs.append(None)
        if run:
            runs.append(run)
        self._last_pulse_t = last
        return runs

    @staticmethod
    def _range_rms(y: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """``(K, C)`` RMS of ``y[:, lo[k]:hi[k]]`` for ordered, disjoint ranges (NaN for empty ones)."""
        n = y.shape[1]
        bounds = np.empty(2 * lo.size, np.int64)
        bounds[0::2], bounds[1::2] = lo, hi
        if bounds[-1] == n:
            bounds = bounds[:-1]  # the last range runs to the end
        sums = np.add.reduceat(y * y, np.minimum(bounds, n - 1), axis=1)[:, 0::2]
        count = hi - lo
        out = np.ascontiguousarray(np.sqrt(sums / np.maximum(count, 1)).T)
        out[count == 0] = np.nan
        return out

    def _spectra(
        self,
        y: np.ndarray,
        valid: np.ndarray,
        lens: np.ndarray,
        n_valid: np.ndarray,
        resp: list[tuple[np.ndarray, SegmentBatch]],
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Push the volitional signal into the streaming Welch estimate and recompute the spectral indices
        where sequential steps would: at the end of the first interval of each update period that brought
        new segments. Returns the indices in force after each interval."""
        n_iv = lens.size
        ends = np.cumsum(lens)
        # the response tracker's sample-weighted count, interval by interval (scalar, as it always was)
        resp_n, resp_any = [], []
        n_run, any_run = self._resp_n, self._resp_any
        pred = np.zeros(n_iv, bool)
        for kk, b in resp:
            pred[kk] = b.n_past > 0
        for n, nv, pr in zip(lens.tolist(), n_valid.tolist(), pred.tolist(), strict=True):
            n_run *= math.exp(-n / self._resp_tau)
            if nv:
                n_run += nv
                any_run = any_run or pr
            resp_n.append(n_run)
            resp_any.append(any_run)
        t0 = self._n_seen
        for kk, b in resp:
            sel = (b.n_past > 0) & (n_valid[kk] > 0)
            if sel.any():
                self._queue_terms(t0 + ends[kk[sel]], b.lags[sel], b.weights[sel], n_valid[kk[sel]])
        # All of the batch into the Welch estimate at once; the ring as it was after each interval is the
        # ring from before the batch followed by the batch's periodograms, cut at what that interval completed.
        w = self.welch
        n0, pushed0, ring0 = w.n_samples, w.segments_pushed, w.n_segments
        before = w.ring_in_order()
        seg_end, seg_kept, pgrams = w.push_channels_first(y, valid)
        stream_end = n0 + ends  # Welch samples after each interval
        kept = np.concatenate(([0], np.cumsum(seg_kept)))[np.searchsorted(seg_end, stream_end, side="right")]
        pushed = (pushed0 + kept).tolist()
        in_ring = np.minimum(w.ring_size, ring0 + kept).tolist()
        due = (stream_end // self._spectral_every).tolist()
        # the updates: where the live loop's settle() would recompute (see _update_spectral)
        updates = []
        seen, last_due = self._welch_seen, self._spectral_due
        for k in range(n_iv):
            if pushed[k] != seen and in_ring[k] >= w.min_segments and due[k] != last_due:
                updates.append(k)
                seen, last_due = pushed[k], due[k]
        out = [self._spectral] * n_iv
        if updates:
            # each update's mean periodogram over the ring it saw, weighted by the responses then, all channels
            # of all updates in one call of the indices
            ring = np.concatenate((before, pgrams)) if before.shape[0] else pgrams
            n_f, n_ch = w.freqs.shape[0], y.shape[0]
            weighted = self._response_weights([t0 + int(ends[k]) for k in updates], resp_n, resp_any, updates)
            upto = ring0 + kept[updates]  # each update's ring: the m = in_ring periodograms before upto
            counts = np.array([in_ring[k] for k in updates], np.int64)
            if self.kernels is not None:
                self.kernels.weigh_ring_means(np.ascontiguousarray(ring), upto, counts, weighted)
            else:
                for u, (j, m) in enumerate(zip(upto.tolist(), counts.tolist(), strict=True)):
                    weighted[:, u] *= ring[j - m : j].sum(axis=0).T / m
            indices = _band_indices(*self._band_f, weighted.reshape(n_f, -1), self.kernels)
            mdf, mnf, fi = (v.reshape(len(updates), n_ch) for v in indices)
            for u, (k, k_next) in enumerate(itertools.pairwise([*updates, n_iv])):
                out[k:k_next] = [(mdf[u], mnf[u], fi[u])] * (k_next - k)
            self._welch_seen, self._spectral_due = seen, last_due
            self._spectral = out[-1]
        self._resp_n, self._resp_any = resp_n[-1], resp_any[-1]
        self._n_seen = t0 + int(ends[-1])
        if len(self._resp_terms) > 64:
            self._flush_response(self._n_seen)
        return out

    def _queue_terms(self, ends: np.ndarray, lags: np.ndarray, weights: np.ndarray, n_valid: np.ndarray) -> None:
        """Queue the response terms (:meth:`_lag_terms`) of predicted segments: their intervals' end samples
        ``(P,)``, lags ``(P, H)``, weights ``(P, C, H)`` and valid samples ``(P,)``. The queue stays in time
        order: segments queued one by one before them go first."""
        if self._resp_raw:
            raw, self._resp_raw = self._resp_raw, []
            self._queue_terms(*(np.concatenate(v) for v in zip(*raw, strict=True)))
        lag, val = self._lag_terms(lags, weights, n_valid)
        use = lag < self._resp_used.size
        self._resp_terms.append((np.repeat(ends, lag.size // ends.size)[use], lag[use], val[use]))

    def _flush_response(self, t: int) -> None:
        """Bring the running response to stream sample ``t``: decayed by ``exp(-samples / window)`` (the
        spectral window), with the queued terms of intervals ending by ``t`` added, each decayed from the end
        of its own interval."""
        self._advance_response([t])

    def _response_weights(self, ts: list[int], resp_n: list[float], resp_any: list[bool], at: list[int]) -> np.ndarray:
        """``(F, U, C)`` what :meth:`_flush_response` at each stream sample of ``ts`` (increasing) followed by
        :meth:`_response_psd_weight` would give, the sample-weighted counts then being ``resp_n[at[u]]`` and
        ``resp_any[at[u]]``, all updates in one product. The running response is left at ``ts[-1]``."""
        coef = self._advance_response(ts, True)  # (U, R, C) the used lags' coefficients at each update
        n = np.maximum(np.array([resp_n[k] for k in at]), 1e-12)
        h2 = 1.0 + np.matmul(self._resp_cos[:, self._resp_rows], coef) / n[:, None, None]  # (U, F, C)
        w = np.where(h2 > 0.2, self._psd_weight / np.maximum(h2, 1e-12), 0.0)
        w[~np.array([resp_any[k] for k in at], bool)] = self._psd_weight  # unfiltered residuals: nothing to divide
        return np.ascontiguousarray(w.transpose(1, 0, 2))

    def _advance_response(self, ts: list[int], keep: bool = False) -> np.ndarray | None:
        """Bring the running response to each stream sample of ``ts`` (increasing) in turn (see
        :meth:`_flush_response`). The queued terms of all of them are decayed to the time they are added at
        and summed per lag together, in queue order: the arithmetic of one flush after the other. ``keep``:
        return ``(U, R, C)`` the coefficients of the lags in use (:attr:`_resp_rows` after ``ts[-1]``) at each
        ``ts[u]`` (a lag first used later is 0 before), else None."""
        if self._resp_raw:
            raw, self._resp_raw = self._resp_raw, []
            self._queue_terms(*(np.concatenate(v) for v in zip(*raw, strict=True)))
        if self._resp_terms:
            ends, lag, val = (np.concatenate(v) for v in zip(*self._resp_terms, strict=True))
        else:
            ends, lag, val = np.empty(0, np.int64), np.empty(0, np.int64), np.empty((0, self.info.n_channels))
        n_u = len(ts)
        t = np.array(ts, dtype=np.int64)
        u_of = np.searchsorted(t, ends, side="left")  # the first time each term is added at (end <= t)
        now = int(np.searchsorted(u_of, n_u))  # queued in time order: the rest waits for a later time
        self._resp_terms = [(ends[now:], lag[now:], val[now:])] if now < ends.size else []
        n_lags = self._resp_lag.shape[0]
        if now:
            val = val[:now] * np.exp(-(t[u_of[:now]] - ends[:now]) / self._resp_tau)[:, None]
            key = u_of[:now] * n_lags + lag[:now]
            order = np.argsort(key, kind="stable")  # by time, the terms of each lag together, in their order
            key = key[order]
            first = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))
            sums = np.add.reduceat(val[order], first, axis=0)
            group_u, group_lag = key[first] // n_lags, key[first] % n_lags
            bounds = np.searchsorted(group_u, np.arange(n_u + 1))
            if not self._resp_used[group_lag].all():
                self._resp_used[group_lag] = True
                self._resp_rows = np.flatnonzero(self._resp_used)
        else:
            bounds = np.zeros(n_u + 1, np.int64)
            group_lag, sums = np.empty(0, np.int64), np.empty((0, self.info.n_channels))
        # the decay of each step (1: none); the lags in use decay, those not yet used are 0 and stay 0
        decay = np.empty(n_u)
        t_prev, tau = self._resp_t, self._resp_tau
        for u, tu in enumerate(ts):
            decay[u] = math.exp(-(tu - t_prev) / tau) if tu != t_prev else 1.0
            t_prev = tu
        self._resp_t = t_prev
        rows = self._resp_rows
        coef = np.empty((n_u if keep else 0, rows.size, self.info.n_channels))
        if self.kernels is not None:
            self.kernels.advance_lags(self._resp_lag, rows, decay, bounds, group_lag, sums, coef)
            return coef if keep else None
        lags = self._resp_lag
        for u in range(n_u):
            if rows.size:
                lags[rows] *= decay[u]
            a, b = bounds[u], bounds[u + 1]
            if b > a:
                lags[group_lag[a:b]] += sums[a:b]
            if keep:
                coef[u] = lags[rows]
        return coef if keep else None

    def _lag_terms(self, lags: np.ndarray, weights: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The lag coefficients of predicted segments: a prediction with weights ``w_j`` at lags ``l_j`` has
        the response ``|1 - sum_j w_j exp(-i w l_j)|^2 / (1 + |w|^2) = 1 + sum over lags of a_l cos(w l)``
        with ``-2 w_j / (1+|w|^2)`` at ``l_j`` and ``2 w_j w_k / (1+|w|^2)`` at ``|l_j - l_k|``; these, times
        ``scale`` (the segment's valid samples, decayed), for lags ``(P, H)`` and weights ``(P, C, H)`` (zero
        weights for lags a segment does not use). Returns ``(lag, (T, C) value)``, segment by segment in the
        order the lags were always accumulated (lag ``j``, then its pairs ``(j, k > j)``); lags out of range
        go to the spare last row."""
        n_p, n_ch, hist = weights.shape
        a, b = self._term_pairs(hist)
        wt = weights.transpose(0, 2, 1)  # (P, H, C)
        norm = scale[:, None] / (1.0 + _sum_sq(weights))  # (P, C)
        # a single lag pairs with a zero lag and the factor -2, a pair (j, k) with 2 w_k
        lz = np.concatenate([lags, np.zeros((n_p, 1), lags.dtype)], axis=1)
        factor = np.concatenate([2.0 * wt, np.full((n_p, 1, n_ch), -2.0)], axis=1)
        lag = np.abs(lz[:, a] - lz[:, b])  # (P, T)
        val = wt[:, a] * factor[:, b] * norm[:, None, :]  # (P, T, C)
        spare = self._resp_lag.shape[0] - 1
        lag[(lag <= 0) | (lag >= spare)] = spare
        return lag.ravel(), val.reshape(-1, n_ch)

    def _term_pairs(self, hist: int) -> tuple[np.ndarray, np.ndarray]:
        """The response terms of ``hist`` lags in accumulation order, lag ``j`` then its pairs ``(j, k > j)``:
        ``(j, k)`` with ``k = hist`` (a zero lag) for a single lag."""
        terms = self._pairs.get(hist)
        if terms is None:
            jk = [(j, k) for j in range(hist) for k in [hist, *range(j + 1, hist)]]
            terms = self._pairs[hist] = tuple(np.array(v) for v in zip(*jk, strict=True))
        return terms

    def _response_psd_weight(self) -> np.ndarray:
        """Weights that turn the Welch PSD of the residual into the volitional EMG's PSD: the filters'
        response and the averaged prediction-error response divided out. The averaged response is a running
        average, over the spectral window and weighted by each interval's valid samples, of
        ``|1 - sum_j w_j exp(-i w l_j)|^2 / (1 + |w|^2) = 1 + sum over lags of a_l cos(w l)``, kept as the lag
        coefficients ``a_l``. It is seen through the Welch window: a cosine of lag ``l`` in the response
        shows in the periodogram attenuated by the window's normalised autocorrelation at ``l`` (comb filter
        notches narrower than the resolution are smeared exactly as the periodogram smears them). Bins where
        less than 20 % would be left are dropped (a comb filter's notches). ``(F, C)`` over the band's bins."""
        if not self._resp_any:  # only unfiltered residuals so far (windows, post): nothing to divide out
            return self._psd_weight
        n = max(self._resp_n, 1e-12)
        rows = self._resp_rows  # the few lags pulses have used (none beyond the spare row)
        h2 = 1.0 + self._resp_cos[:, rows] @ self._resp_lag[rows] / n  # (F, C)
        return np.where(h2 > 0.2, self._psd_weight / np.maximum(h2, 1e-12), 0.0)

    def _references(
        self, measured: np.ndarray, ptp: np.ndarray, area: np.ndarray, amps: Sequence[float], n_iv: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Update the M-wave reference pulse by pulse (:meth:`_reference`); ``(K, C)`` the reference in force
        after each interval (NaN while there is none)."""
        nan = np.full(ptp.shape[1], np.nan)
        refs = [(self.mwave_ref_ptp, self.mwave_ref_area)]
        changed: list[int] = []
        for k in measured.tolist():
            before = self.mwave_ref_ptp
            self._reference(ptp[k], area[k], amps[k])
            if self.mwave_ref_ptp is not before:
                changed.append(k)
                refs.append((self.mwave_ref_ptp, self.mwave_ref_area))
        which = np.searchsorted(np.array(changed, dtype=np.int64), np.arange(n_iv), side="right")
        ref_p = np.stack([nan if r is None else r for r, _ in refs])[which]
        ref_a = np.stack([nan if r is None else r for _, r in refs])[which]
        return ref_p, ref_a

    def _estimates(
        self,
        ivs: Sequence[Interval],
        first: np.ndarray,
        t_first: list[float],
        amps: list[float],
        effort: np.ndarray,
        ptp: np.ndarray,
        area: np.ndarray,
        latency: np.ndarray,
        ref_p: np.ndarray,
        ref_a: np.ndarray,
        spectral: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
        warns: list[list[str]],
    ) -> list[Estimate]:
        """One :class:`Estimate` per interval; the effort smoothing runs through them in order. Per-channel
        values are rows of ``(K, C)`` arrays."""
        c = self.config.control_channel
        mvc = self.mvc_uv
        with np.errstate(divide="ignore", invalid="ignore"):  # references of 0 (a flat channel): no ratio, no warning
            pct = effort / mvc * 100.0 if mvc is not None else np.full_like(effort, np.nan)
            rel_p, rel_a = ptp / ref_p, area / ref_a
        effort_c = effort[:, c].tolist()
        smooth = self._smooth(effort_c, [iv.samples.shape[0] for iv in ivs])
        pct_c = [v / mvc[c] * 100.0 for v in smooth] if mvc is not None else [math.nan] * len(ivs)
        per_interval = zip(
            ivs,
            first.tolist(),
            t_first,
            amps,
            effort_c,
            smooth,
            pct_c,
            ptp[:, c].tolist(),
            list(effort),
            list(ptp),
            list(area),
            list(latency),
            list(pct),
            list(rel_p),
            list(rel_a),
            spectral,
            warns,
            strict=True,
        )
        return [
            _frozen(
                Estimate,
                index=iv.index,
                t_start=t_p if p >= 0 else float(iv.timestamps[0]),
                t_end=float(iv.timestamps[-1]),
                amplitude_ma=amp,
                effort_uv=e,
                effort_smooth_uv=e_s,
                effort_pct_mvc=pct_s,
                mwave_ptp_uv=ptp_c,
                channel_effort_uv=eff,
                channel_mwave_ptp_uv=ptp_k,
                channel_mwave_area_uvs=area_k,
                channel_mwave_latency_s=lat,
                channel_effort_pct_mvc=pct_k,
                channel_mwave_ptp_rel=rel_p,
                channel_mwave_area_rel=rel_a,
                channel_mdf_hz=spec[0],
                channel_mnf_hz=spec[1],
                channel_fi_nsm5=spec[2],
                warnings=tuple(w),
                has_pulse=p >= 0,
            )
            for iv, p, t_p, amp, e, e_s, pct_s, ptp_c, eff, ptp_k, area_k, lat, pct_k, rel_p, rel_a, spec, w in (
                per_interval
            )
        ]

    # -- shared by both -----------------------------------------------------------------------------------
    def _window_text(self, after: int) -> str:
        """The M-wave window warnings' detail for a pulse ``after`` samples before the interval's end."""
        text = self._short_text.get(after)
        if text is None:
            text = self._short_text[after] = (
                f"{after / self._fs * 1e3:.1f} ms after the pulse, window ends at "
                f"{self.config.mwave_window_s[1] * 1e3:.1f} ms"
            )
        return text

    def _reference(self, ptp: np.ndarray, area: np.ndarray, amplitude_ma: float) -> None:
        """Count one measured M-wave towards the reference. The reference is the first pulses at the current
        intensity: a change of more than 2 % starts a new one (an M-wave fatigue index compares like with
        like; under a varying intensity it stays NaN)."""
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

    def _smooth(self, efforts_uv: list[float], lens: list[int]) -> list[float]:
        """Fold consecutive intervals' efforts (control channel, uV; ``lens`` samples each) into the smoothed
        effort and return it after each: in the power domain, the square root of the averaged mean square, so
        that short, noisy RMS values do not bias the average low (the mean of RMS values underestimates the
        RMS). Non-finite efforts leave it as it is."""
        smoothing_s, fs = self.config.smoothing_s, self._fs
        power, smooth = self._power_smooth, self.effort_smooth_uv
        out = []
        for e, n in zip(efforts_uv, lens, strict=True):
            if math.isfinite(e):
                if math.isnan(smooth) or smoothing_s == 0:
                    power = e * e
                else:
                    alpha = 1.0 - math.exp(-(n / fs) / smoothing_s)
                    power += alpha * (e * e - power)
                smooth = math.sqrt(power)
            out.append(smooth)
        self._power_smooth, self.effort_smooth_uv = power, smooth
        return out

    def _recompute_spectral(self, due: int, t: int) -> None:
        """Spectral indices of the Welch estimate, with the filters' and the predictions' responses divided
        out; ``due`` is the stream's update period, ``t`` the stream sample it is at."""
        self._flush_response(t)
        w = self.welch
        self._welch_seen = w.segments_pushed
        self._spectral_due = due
        _, psd = w.psd()
        self._spectral = _band_indices(*self._band_f, psd * self._response_psd_weight(), self.kernels)
