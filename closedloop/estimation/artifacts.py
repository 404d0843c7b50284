"""Stimulation artifacts: bridging them with straight lines, and finding the pulses from them.

:func:`blank_linear` replaces the samples of an artifact by the straight line between the samples
either side of it (in place), which is what the estimators do before filtering.

:class:`ArtifactDetector` finds stimulation pulses in raw EMG, streaming, from the artifacts they leave:
when the stimulator's own pulse times are unknown or untrustworthy. :func:`detect_pulses` runs it over a
whole recording.

Detection
---------
Per sample ``n`` and selected channel ``c`` the *statistic* is the absolute finite difference of order
``order`` of the raw signal, in units of that channel's threshold ``T_c``; a sample's statistic is the
largest over the channels::

    order 1:  s[n] = max_c |x_c[n] - x_c[n-1]| / T_c
    order 2:  s[n] = max_c |x_c[n] - 2 x_c[n-1] + x_c[n-2]| / T_c        (the default)

For a step-like artifact of height ``A`` at sample ``n`` both orders give ``A / T_c``: a fixed threshold
means "a jump of more than this much in one sample" in the signal's units either way. Each channel is
measured against its own threshold, so an artifact that shows on one channel only (the one nearest the
stimulation electrodes) is found however loud the others are. The second
difference weighs frequencies by ``4 sin^2(pi f / rate)`` instead of ``2 sin(pi f / rate)``: it keeps the
broadband artifact and suppresses the slower physiological slopes (motor-unit potentials, M-waves,
reflexes) further.

A sample ``n`` is a detection when all of these hold:

1. ``s[n] > 1``: a channel's difference exceeds its threshold. The threshold is fixed (``threshold``, signal
   units per sample, the same for every channel) or adaptive, per channel: ``median + k_mad * 1.4826 * MAD``
   of the channel's absolute difference over the first ``warmup_s`` of data (a channel whose threshold comes
   out 0, flat or all NaN, is not watched). The median
   and the median absolute deviation from it barely notice a minority of artifact samples (stimulation
   at 30 Hz makes roughly 5-10 % of the samples steep), so the warm-up may contain pulses: on white
   noise with 20 % of the statistic's samples made huge by artifacts the threshold rises by 45 %
   (their standard deviation grows almost 400-fold).
2. *Sharpness* (``sharpness``, default 5): on a channel that exceeds its threshold at ``n``, the difference
   is at least ``sharpness`` times that channel's largest one in the background window, the ``lookback_s``
   (5 ms) that ends ``rise_s`` (0.5 ms) before ``n`` (each channel against its own background: an artifact on
   one quiet channel is not judged against the noise of the others). A stimulator's artifact rises within a
   fraction of a millisecond out of whatever the signal did before; a motor-unit potential, an M-wave or a
   reflex steepens gradually over several samples, so its own flank is in its background. ``sharpness=None``
   turns the test off.
3. ``n`` is at least ``min_interval_s`` after the previous detection: later crossings within that time
   belong to the same pulse (refractory period).

The detection is the *first* sample satisfying all three: the artifact's first steep sample. For a real
stimulator this is within a sample or two of the pulse (the pulse edge is microseconds steep; the
amplifier and anti-aliasing filter spread it over one or two samples, and on an artifact that builds up
over two or three samples the first of them may not yet be steep enough). On the simulated muscle
(:mod:`acquisition.simulator.muscle`, whose artifact is a step at the pulse sample) it is the pulse
sample exactly.

Doublets and close pulses
    Pulses closer than ``min_interval_s`` give one detection, at the first (the second is inside the
    refractory period); use a longer ``min_interval_s`` to merge wider doublets. A pulse later than
    that but within ``rise_s + lookback_s`` plus the previous artifact's own decay has that artifact's
    tail in its background window: it can be missed, or detected a sample late on its second steep
    sample. On the simulated muscle at 2048 Hz, pairs 5.4-5.9 ms apart give one detection, 6.3 ms the
    second one sample late, from 6.8 ms on both exactly.

Streaming
    The statistic of the first ``order`` samples ever given is undefined (no earlier sample): a pulse
    there is not detected. After that, differences across chunk boundaries are exact (the last
    ``order`` samples are carried), and a decision at sample ``n`` needs no later sample, so
    :meth:`ArtifactDetector.step` returns each pulse with the chunk that contains it. During the
    adaptive warm-up nothing is returned: the statistic is kept and searched as soon as the threshold is
    known, so the same pulses are found whatever the chunking (the threshold depends only on the first
    ``warmup_s`` of samples and every decision only on samples). :meth:`~ArtifactDetector.flush` returns
    what is still buffered when a recording is shorter than the warm-up. A non-finite sample gives no
    statistic (NaN): it never detects, is left out of the warm-up, and fails the sharpness test of the
    samples whose background window contains it.

Real data
---------
Checked on the tSCS recordings in ``shared/data`` (single surface EMG channel at 4000 Hz, units not
documented, DC offset ~7.7e4), defaults throughout, the first second as warm-up:

* ``tscs_SingleCh_StimON.mat`` (148.8 s): no stimulation for the first 18.6 s, then pulses at ~30 Hz to
  the end; artifacts with a one-sample jump of ~220-340 units until ~28 s and again after ~115 s,
  ~2000-4000 in between, with strong voluntary EMG and evoked responses between them. Threshold 31.3
  (median 3.9, robust scale 3.4). 3904 detections, the first at 18.631 s, none before; median
  inter-pulse interval 133 samples = 33.25 ms (30.08 Hz); all 3903 intervals within 10 % of the
  median (131-136 samples). Every pulse found by following the 30 Hz train was detected once, 2-6
  (mostly 3-4) samples before the largest one-sample jump of its artifact, i.e. where its first
  deflection starts.
* ``tscs_SingleCh_StimOFF.mat`` (78.2 s, the same channel without stimulation, five strong
  contractions): threshold 31.9, no detection.

The sharpness test is what makes this work. Without it no threshold on either statistic separates the
artifacts from the physiology: the largest first differences of motor-unit potentials in the OFF
recording (~350 units) exceed the jumps of the weak artifacts in the ON recording (~220). The first
difference with ``k_mad=8`` and no sharpness test finds 7912 "pulses" in the ON recording (median
interval 41 samples, 97.6 Hz) and 3106 in the OFF recording; even on the simulated muscle (20 mA,
30 Hz) it detects every M-wave as a second pulse after the refractory period (~1210 detections for
600 pulses). With the sharpness test, the first difference gives 19 extra detections and 1 miss on ON
and 31 detections on OFF; the second difference none. The form of the test comes from the physics (an
artifact is steep within 0.5 ms, a motor-unit potential over 1-3 ms); the values (``sharpness=5``,
5 ms, 0.5 ms) were then placed in the middle of the range that works on these two files, the only real
recordings checked: ``sharpness`` 5 with ``lookback_s`` 4-7 ms and ``k_mad`` 5-16 misses no pulse and
adds at most 1 detection on ON and 2 on OFF; ``sharpness`` 4 or 6 adds up to 8.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from closedloop.errors import ConfigError

__all__ = ["ArtifactDetector", "blank_linear", "detect_pulses", "is_pulse_train", "pulses_missed_in_train"]

_MAD_TO_SIGMA = 1.4826  # 1 / Phi^-1(3/4): MAD of a Gaussian times this is its standard deviation
_EPS = 1e-9  # tolerance when converting durations to whole samples


def blank_linear(
    x: np.ndarray, starts: Sequence[int] | np.ndarray, n_blank: int, before: np.ndarray | None = None
) -> None:
    """Replace artifact windows by straight lines, in place.

    Parameters
    ----------
    x:
        ``(n, n_channels)`` float array, modified in place.
    starts:
        Sorted sample indices where windows begin; window ``s`` is ``x[s : s + n_blank]``. Windows that
        overlap or touch merge into one. A negative start blanks the part of its window inside ``x``; a
        start at or after ``n`` is ignored.
    n_blank:
        Window length in samples (0 does nothing).
    before:
        ``(n_channels,)`` the sample just before ``x[0]`` (e.g. the end of the previous chunk), used as
        the left end of a window starting at 0.

    Notes
    -----
    Each window ``x[a:b]`` becomes the line from the left value at index ``a - 1`` to the right value
    at index ``b``: left is ``x[a - 1]``, or ``before`` when ``a == 0``, or else ``x[b]`` (flat); right
    is ``x[b]``, or the left value when the window runs to the end of ``x`` (held). A window with
    neither (all of ``x``, no ``before``) is set to zero.
    """
    if x.ndim != 2:
        raise ValueError(f"blank_linear needs x of shape (n, n_channels), got shape {x.shape}")
    n_blank = int(n_blank)
    if n_blank < 0:
        raise ValueError(f"n_blank = {n_blank}: must be >= 0")
    s = np.asarray(starts, dtype=np.int64).reshape(-1)
    n = x.shape[0]
    s = s[s < n]
    if n_blank == 0 or s.size == 0 or n == 0:
        return
    if np.any(np.diff(s) < 0):
        raise ValueError("blank_linear needs sorted starts")
    # a new merged window begins where a start lies beyond the end of the previous window
    first = np.flatnonzero(np.r_[True, s[1:] > s[:-1] + n_blank])
    last = np.r_[first[1:] - 1, s.size - 1]
    if before is not None:
        before = np.asarray(before, dtype=x.dtype).reshape(x.shape[1])
    for a, b in zip(s[first].tolist(), (s[last] + n_blank).tolist(), strict=True):
        a = max(a, 0)
        b = min(b, n)
        if b <= a:
            continue
        if a > 0:
            left = x[a - 1].copy()
        elif before is not None:
            left = before
        elif b < n:
            left = x[b].copy()
        else:
            x[a:b] = 0.0
            continue
        right = x[b] if b < n else left
        w = np.arange(1, b - a + 1, dtype=np.float64) / (b - a + 1)
        x[a:b] = left[None, :] + (right - left)[None, :] * w[:, None]


def _whole(samples: float) -> int:
    """Nearest whole number of samples, halves rounded up."""
    return math.floor(samples + 0.5)


def _positive(name: str, value: object) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"ArtifactDetector {name} = {value!r}: must be a number") from None
    if not (math.isfinite(v) and v > 0):
        raise ConfigError(f"ArtifactDetector {name} = {value!r}: must be a finite number > 0")
    return v


def _nonneg(name: str, value: object) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"ArtifactDetector {name} = {value!r}: must be a number") from None
    if not (math.isfinite(v) and v >= 0):
        raise ConfigError(f"ArtifactDetector {name} = {value!r}: must be a finite number >= 0")
    return v


class ArtifactDetector:
    """Streaming detection of stimulation pulses from their artifacts in raw EMG.

    See the module docstring for the statistic, the three conditions of a detection and the results on
    real recordings.

    Parameters
    ----------
    rate_hz:
        Sampling rate (Hz).
    n_channels:
        Channels per sample given to :meth:`step`.
    threshold:
        Fixed threshold on the statistic (signal units per sample); None: adaptive.
    k_mad:
        Adaptive threshold: robust standard deviations above the median (default 8). Not together
        with ``threshold``.
    min_interval_s:
        Refractory period (s): crossings closer than this after a detection belong to the same pulse.
    warmup_s:
        Adaptive threshold: length of the initial data it is estimated from (s).
    channels:
        Indices of the channels to watch; None: all.
    order:
        Order of the finite difference (1 or 2).
    sharpness:
        A detection's statistic must be at least this many times (>= 1) the largest statistic in its
        background window; None: no sharpness test.
    lookback_s, rise_s:
        The background window of sample ``n`` is the ``lookback_s`` ending ``rise_s`` before ``n`` (the
        time an artifact may take to build up); both are rounded to whole samples, ``lookback_s`` to at
        least one.

    Attributes
    ----------
    threshold_:
        ``(len(channels),)`` the threshold of each watched channel (signal units per sample; 0: not watched),
        None until the adaptive warm-up is complete.
    """

    def __init__(
        self,
        rate_hz: float,
        n_channels: int,
        threshold: float | None = None,
        k_mad: float | None = None,
        min_interval_s: float = 0.005,
        warmup_s: float = 1.0,
        channels: Sequence[int] | None = None,
        *,
        order: int = 2,
        sharpness: float | None = 5.0,
        lookback_s: float = 0.005,
        rise_s: float = 0.0005,
    ) -> None:
        self.rate_hz = _positive("rate_hz", rate_hz)
        if isinstance(n_channels, bool) or not isinstance(n_channels, (int, np.integer)) or n_channels < 1:
            raise ConfigError(f"ArtifactDetector n_channels = {n_channels!r}: must be an integer >= 1")
        self.n_channels = int(n_channels)
        if threshold is not None and k_mad is not None:
            raise ConfigError("ArtifactDetector: give a fixed threshold or k_mad (adaptive), not both")
        self.fixed_threshold = None if threshold is None else _positive("threshold", threshold)
        self.k_mad = 8.0 if k_mad is None else _positive("k_mad", k_mad)
        self.min_interval_s = _nonneg("min_interval_s", min_interval_s)
        self.warmup_s = _positive("warmup_s", warmup_s)
        if channels is None:
            chans = np.arange(self.n_channels)
        else:
            chans = np.asarray(list(channels))
            if (
                chans.ndim != 1
                or chans.size == 0
                or not np.issubdtype(chans.dtype, np.integer)
                or chans.min() < 0
                or chans.max() >= self.n_channels
                or np.unique(chans).size != chans.size
            ):
                raise ConfigError(
                    f"ArtifactDetector channels = {channels!r}: must be distinct channel indices in "
                    f"0..{self.n_channels - 1}"
                )
        self.channels = chans.astype(np.intp)
        if order not in (1, 2) or isinstance(order, bool):
            raise ConfigError(f"ArtifactDetector order = {order!r}: must be 1 or 2")
        self.order = int(order)
        if sharpness is not None:
            sharpness = _positive("sharpness", sharpness)
            if sharpness < 1:
                raise ConfigError(f"ArtifactDetector sharpness = {sharpness!r}: must be >= 1 (or None)")
        self.sharpness = sharpness
        self.lookback_s = _positive("lookback_s", lookback_s)
        self.rise_s = _nonneg("rise_s", rise_s)

        self._n_ref = max(1, math.ceil(self.min_interval_s * self.rate_hz - _EPS))
        self._n_warm = max(1, _whole(self.warmup_s * self.rate_hz))
        self._n_back = max(1, _whole(self.lookback_s * self.rate_hz))
        self._n_rise = _whole(self.rise_s * self.rate_hz)
        self.reset()

    # ------------------------------------------------------------------ state

    def reset(self) -> None:
        """Forget everything: the next sample given is sample 0 again (and the warm-up restarts)."""
        self.threshold_: np.ndarray | None = None
        self._inv: np.ndarray | None = None  # 1 / threshold per watched channel (0: not watched)
        if self.fixed_threshold is not None:
            self._use_thresholds(np.full(self.channels.size, self.fixed_threshold))
        self._tail = np.empty((0, self.channels.size))  # last `order` raw samples of the watched channels
        self._y = np.empty((0, self.channels.size))  # scratch: the tail and a chunk's samples
        self._d1 = np.empty((0, self.channels.size))  # scratch: first differences
        self._n_total = 0  # samples given so far
        self._buf = np.empty((0, self.channels.size))  # differences / thresholds of samples _buf_start ..
        # statistic of the samples given since, chunk by chunk; during the adaptive warm-up, per channel (n, C)
        # in signal units, made the statistic once the thresholds are known
        self._parts: list[np.ndarray] = []
        self._buf_start = 0
        self._next = 0  # first sample not yet decided
        self._last_det: int | None = None
        self._warm: list[np.ndarray] = []  # (n, C) differences of the samples with all channels finite, warm-up
        self._n_warm_seen = 0

    # ------------------------------------------------------------------ streaming

    def step(self, x: np.ndarray) -> np.ndarray:
        """Take the next chunk ``(n, n_channels)``; return the pulse onsets confirmed by it.

        A detection needs no later samples, so after the warm-up every pulse is returned by the call
        that contains its onset sample.

        Returns
        -------
        np.ndarray
            int64 absolute sample indices (counted from the first sample ever given, or since
            :meth:`reset`), increasing; empty during the adaptive warm-up, whose pulses are returned
            by the call that completes it.
        """
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.n_channels:
            raise ValueError(f"ArtifactDetector.step needs shape (n, {self.n_channels}), got {x.shape}")
        diffs, n_undefined = self._differences(x)
        self._n_total += diffs.shape[0]
        if self.threshold_ is None:
            self._parts.append(diffs)
            self._collect_warmup(diffs[n_undefined:])
            if self.threshold_ is None:
                return np.empty(0, dtype=np.int64)
        else:
            self._parts.append(self._statistic(diffs))
        return self._decide()

    def flush(self) -> np.ndarray:
        """End of the recording: return the pulse onsets still buffered.

        Only a recording shorter than the adaptive warm-up leaves any: the threshold is then estimated
        from the data there is (nothing is returned if there is none). Giving more samples afterwards
        continues the same stream.
        """
        if self.threshold_ is None:
            if not self._warm:
                return np.empty(0, dtype=np.int64)
            self._set_threshold(np.concatenate(self._warm))
        return self._decide()

    # ------------------------------------------------------------------ internals

    def _differences(self, x: np.ndarray) -> tuple[np.ndarray, int]:
        """``(n, C)`` absolute differences of the new samples on the watched channels (NaN where not finite), and
        how many of them (leading) have none yet (set to 0)."""
        n = x.shape[0]
        d = np.zeros((n, self.channels.size))
        if n == 0:
            return d, 0
        # the samples after the previous ones, in a buffer kept from call to call: a chunk's worth of fresh
        # temporaries (a copy, a join, two differences) cost more in page faults than their arithmetic
        k = self._tail.shape[0]
        if self._y.shape[0] < k + n:
            self._y = np.empty((k + n, self.channels.size))
        y = self._y[: k + n]
        y[:k] = self._tail
        if x.dtype == np.float64:
            np.take(x, self.channels, axis=1, out=y[k:], mode="clip")  # (mode "raise" copies to a temporary)
        else:
            y[k:] = x[:, self.channels]
        self._tail = y[-self.order :].copy()
        n_def = max(0, y.shape[0] - self.order)  # the last n_def samples have a defined difference
        if n_def:
            s = d[n - n_def :]
            with np.errstate(invalid="ignore", over="ignore"):  # what np.diff computes, into d
                if self.order == 1:
                    np.subtract(y[1:], y[:-1], out=s)
                else:  # (y[i+2] - y[i+1]) - (y[i+1] - y[i])
                    if self._d1.shape[0] < n_def:
                        self._d1 = np.empty((n_def, self.channels.size))
                    np.subtract(y[2:], y[1:-1], out=s)
                    np.subtract(s, np.subtract(y[1:-1], y[:-2], out=self._d1[:n_def]), out=s)
                np.abs(s, out=s)
            s[~np.isfinite(s)] = np.nan  # inf - inf, or an inf sample: no usable difference
        return d, n - n_def

    def _statistic(self, diffs: np.ndarray) -> np.ndarray:
        """``(n, C)`` differences in units of each channel's threshold (0 on channels not watched); ``s[n]`` is
        their largest (NaN where any is NaN)."""
        assert self._inv is not None
        return diffs * self._inv

    def _collect_warmup(self, diffs: np.ndarray) -> None:
        finite = diffs[np.isfinite(diffs).all(axis=1)]
        need = self._n_warm - self._n_warm_seen
        take = finite[:need]
        if take.shape[0]:
            self._warm.append(take)
            self._n_warm_seen += take.shape[0]
        if self._n_warm_seen >= self._n_warm:
            self._set_threshold(np.concatenate(self._warm))

    def _set_threshold(self, values: np.ndarray) -> None:
        """The adaptive thresholds from the warm-up's ``(n, C)`` differences; the buffered ones made the
        statistic."""
        med = np.median(values, axis=0)
        dev = np.abs(values - med)
        scale = _MAD_TO_SIGMA * np.median(dev, axis=0)
        # more than half the values equal (e.g. a quantised, nearly flat signal): the mean deviation instead
        scale = np.where(scale == 0.0, math.sqrt(math.pi / 2.0) * np.mean(dev, axis=0), scale)
        self._use_thresholds(med + self.k_mad * scale)
        self._warm = []
        self._parts = [self._statistic(d) for d in self._parts]

    def _use_thresholds(self, thr: np.ndarray) -> None:
        """Set the per-channel thresholds; a channel whose threshold is 0 (flat) is not watched."""
        self.threshold_ = thr
        with np.errstate(divide="ignore"):
            self._inv = np.where(thr > 0, 1.0 / thr, 0.0)

    def _decide(self) -> np.ndarray:
        """Detections among the samples not yet decided (all of them: no look-ahead); trims the buffer."""
        stop = self._n_total
        if self._parts:
            self._buf = np.concatenate((self._buf, *self._parts))
            self._parts = []
        if stop <= self._next:
            return np.empty(0, dtype=np.int64)
        off = self._buf_start
        with np.errstate(invalid="ignore"):
            cand = np.flatnonzero(self._buf[self._next - off :].max(axis=1) > 1.0) + self._next  # absolute
        if cand.size and self.sharpness is not None:
            cand = cand[self._sharp(cand)]
        dets = []
        last = self._last_det
        while cand.size:
            j = 0 if last is None else int(np.searchsorted(cand, last + self._n_ref))
            if j >= cand.size:
                break
            last = int(cand[j])
            dets.append(last)
            cand = cand[j + 1 :]
        self._last_det = last
        self._next = stop
        keep_from = max(off, stop - self._n_rise - self._n_back)
        self._buf = self._buf[keep_from - off :]
        self._buf_start = keep_from
        return np.asarray(dets, dtype=np.int64)

    def _sharp(self, cand: np.ndarray) -> np.ndarray:
        """Sharpness test for candidate samples (absolute indices, in the buffer); boolean mask: a channel over
        its threshold there is ``sharpness`` times its own background's largest."""
        # samples before the first one ever given count as 0 (the statistic is >= 0, so a missing history
        # does not count); a NaN in a channel's window makes its maximum NaN, which fails the comparison
        gap = self._n_rise + self._n_back
        padded = np.concatenate((np.zeros((gap, self._buf.shape[1])), self._buf))
        pos = cand - self._buf_start + gap
        window = pos[:, None] + np.arange(-gap, -self._n_rise)[None, :]
        back = padded[window].max(axis=1)  # (candidates, C)
        now = padded[pos]
        with np.errstate(invalid="ignore"):
            return ((now > 1.0) & (now >= self.sharpness * back)).any(axis=1)


def detect_pulses(x: np.ndarray, rate_hz: float, **kwargs) -> np.ndarray:
    """Pulse onsets (int64 sample indices) in a whole recording ``x`` (``(n, n_channels)`` or ``(n,)``).

    Runs :class:`ArtifactDetector` (``kwargs`` are its parameters) over ``x`` in one call, then flushes.
    """
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[:, None]
    det = ArtifactDetector(rate_hz, x.shape[1], **kwargs)
    return np.concatenate((det.step(x), det.flush()))


def is_pulse_train(
    pulse_samples: np.ndarray,
    rate_hz: float,
    min_pulses: int = 10,
    tolerance: float = 0.1,
    max_rate_hz: float = 200.0,
    min_rate_hz: float = 1.0,
) -> bool:
    """Do detected events look like stimulation: trains of pulses at a steady rate?

    Stimulators pulse at a fixed rate, in trains that may pause; motor-unit potentials mistaken for
    artifacts come at irregular intervals. True when there are at least ``min_pulses`` events, their median
    interval corresponds to ``min_rate_hz``..``max_rate_hz``, and at least 80 % of the intervals within the
    trains (shorter than 1.5 x the median) lie within ``tolerance`` of the median, those making up at least
    half of all intervals.
    """
    idx = np.unique(np.asarray(pulse_samples, dtype=np.int64))
    if idx.size < min_pulses:
        return False
    d = np.diff(idx).astype(float)
    m = float(np.median(d))
    if not (rate_hz / max_rate_hz <= m <= rate_hz / min_rate_hz):
        return False
    in_train = d[d < 1.5 * m]
    if in_train.size < 0.5 * d.size:
        return False
    return bool(np.mean(np.abs(in_train - m) <= tolerance * m) >= 0.8)


def pulses_missed_in_train(pulse_samples: np.ndarray, tolerance: float = 0.1) -> int:
    """How many pulses a steady train (:func:`is_pulse_train`) seems to lack: gaps within ``tolerance`` of 2, 3 or
    4 times its median interval hold 1, 2 or 3 pulses that were not found (longer gaps are pauses)."""
    d = np.diff(np.unique(np.asarray(pulse_samples, dtype=np.int64))).astype(float)
    if d.size == 0:
        return 0
    k = d / float(np.median(d))
    whole = np.rint(k)
    gap = (whole >= 2) & (whole <= 4) & (np.abs(k - whole) <= tolerance * whole)
    return int(np.sum(np.where(gap, whole - 1, 0)))
