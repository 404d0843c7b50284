"""Cutting a continuous stream into consecutive intervals on the sample grid."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from closedloop.errors import ConfigError

__all__ = ["Interval", "IntervalSegmenter", "PulseSegmenter"]


@dataclass(frozen=True, eq=False)
class Interval:
    """Consecutive samples between two interval boundaries.

    Attributes
    ----------
    index:
        Running number of the interval (0-based).
    start_sample:
        Index of the first sample in the whole stream.
    samples:
        ``(n, n_channels)`` array, the receiver's to keep: the segmenters never write into an array once they
        have emitted it, and no other interval shares its rows (:class:`PulseSegmenter` emits views of one
        array per chunk).
    timestamps:
        ``(n,)`` LSL times of the samples (s), likewise.
    """

    index: int
    start_sample: int
    samples: np.ndarray
    timestamps: np.ndarray


class IntervalSegmenter:
    """Splits chunks of any size into intervals of ``interval_s`` seconds.

    Boundaries are absolute on the sample grid: interval ``k`` starts at sample
    ``base + round((k - k_base) * rate_hz * interval_s)``, so fractional lengths (2048 Hz / 25 Hz = 81.92
    samples) never accumulate drift. The length can change between intervals (:meth:`set_interval_s`).

    Parameters
    ----------
    n_channels:
        Channels per sample.
    rate_hz:
        Sampling rate (Hz).
    interval_s:
        Interval length (s); must span at least 2 samples.
    dtype:
        dtype of the emitted interval arrays.
    """

    def __init__(self, n_channels: int, rate_hz: float, interval_s: float, dtype=np.float64) -> None:
        if rate_hz <= 0:
            raise ConfigError(f"IntervalSegmenter needs a regular stream, got rate_hz={rate_hz}")
        self.n_channels = n_channels
        self.rate_hz = float(rate_hz)
        self.dtype = dtype
        self.index = 0
        self._n_seen = 0
        self._base_sample = 0
        self._base_index = 0
        self._set_length(interval_s)
        self._start_current()

    def _set_length(self, interval_s: float) -> None:
        n_per = self.rate_hz * interval_s
        if not n_per >= 2:
            raise ConfigError(f"interval of {interval_s} s is shorter than 2 samples at {self.rate_hz:g} Hz")
        self._n_per = n_per
        self.interval_s = float(interval_s)

    def _boundary(self, k: int) -> int:
        return self._base_sample + round((k - self._base_index) * self._n_per)

    def _start_current(self) -> None:
        start = self._boundary(self.index)
        n = self._boundary(self.index + 1) - start
        self._start = start
        self._buf = np.empty((n, self.n_channels), dtype=self.dtype)
        self._ts = np.empty(n)
        self._fill = 0

    def set_interval_s(self, interval_s: float) -> None:
        """Use a new interval length from the next boundary on (the current interval keeps its length)."""
        self._base_sample = self._boundary(self.index + 1)
        self._base_index = self.index + 1
        self._set_length(interval_s)

    @property
    def samples_seen(self) -> int:
        """Samples consumed so far."""
        return self._n_seen

    def current(self) -> tuple[Interval, int] | None:
        """The interval being filled and how many of its samples are in (None before its first): its arrays
        are the ones :meth:`push` will return it in (the samples not in yet are undefined)."""
        if self._fill == 0:
            return None
        return Interval(self.index, self._start, self._buf, self._ts), self._fill

    def push(self, samples: np.ndarray, timestamps: np.ndarray) -> list[Interval]:
        """Consume a chunk; return the intervals it completed (usually zero or one)."""
        out: list[Interval] = []
        n = samples.shape[0]
        pos = 0
        while pos < n:
            room = self._buf.shape[0] - self._fill
            take = min(room, n - pos)
            self._buf[self._fill : self._fill + take] = samples[pos : pos + take]
            self._ts[self._fill : self._fill + take] = timestamps[pos : pos + take]
            self._fill += take
            pos += take
            if self._fill == self._buf.shape[0]:
                out.append(Interval(self.index, self._start, self._buf, self._ts))
                self.index += 1
                self._start_current()
        self._n_seen += n
        return out


def _joined(rest: np.ndarray, samples: np.ndarray, dtype) -> np.ndarray:
    """``rest`` followed by ``samples``, one new ``(n, C)`` array of ``dtype``, laid out in memory as the chunk
    is: channels first where its samples are (a file's chunks are views of what the reader read channel by
    channel, and the estimator works channels first), samples first otherwise (LSL chunks)."""
    n0, n = rest.shape[0], samples.shape[0]
    channels_first = samples.ndim == 2 and n > 1 and samples.shape[1] > 1 and samples.strides[0] == samples.itemsize
    out = np.empty((n0 + n, samples.shape[1]), dtype, order="F" if channels_first else "C")
    out[:n0] = rest
    out[n0:] = samples
    return out


class PulseSegmenter:
    """Splits a stream into intervals from each pulse to the next (replays, where the pulses are given).

    Each pulse opens an interval that ends at the next pulse, or ``max_interval_s`` after it if the next one
    is further away; stretches without pulses are cut into windows of ``window_s``. Pulses are given as
    absolute sample indices with the chunk that holds them (a pulse must be known by the time its sample
    arrives). The boundaries are the same whatever the chunking.

    With ``lead_s`` an interval begins that long before its pulse (at most up to the previous pulse): a pulse
    marked late (a software trigger sent after the stimulator fired) then has the first samples of its artifact
    in its own interval, before the pulse, instead of at the end of the previous interval's volitional EMG.

    Parameters
    ----------
    n_channels, rate_hz:
        Stream shape and rate (Hz).
    window_s:
        Window length without pulses (s).
    max_interval_s:
        Longest interval opened by a pulse (s).
    lead_s:
        How long before its pulse an interval begins (s; 0: on the pulse).
    """

    def __init__(
        self,
        n_channels: int,
        rate_hz: float,
        window_s: float = 0.1,
        max_interval_s: float = 0.5,
        dtype=np.float64,
        lead_s: float = 0.0,
    ) -> None:
        if rate_hz <= 0:
            raise ConfigError(f"PulseSegmenter needs a regular stream, got rate_hz={rate_hz}")
        self.n_channels = n_channels
        self.rate_hz = float(rate_hz)
        self.window = max(2, round(window_s * rate_hz))
        self.longest = max(self.window, round(max_interval_s * rate_hz))
        if self.window < 2:
            raise ConfigError(f"window of {window_s} s is shorter than 2 samples at {rate_hz:g} Hz")
        if not lead_s >= 0:
            raise ConfigError(f"lead_s = {lead_s}: must be >= 0")
        self.lead = round(lead_s * rate_hz)
        self.dtype = dtype
        self.index = 0
        self._cur = 0  # first sample of the open interval
        self._cur_pulse = False
        self._cur_p = 0  # the sample of the pulse that opened it (when _cur_pulse)
        self._pending: list[int] = []  # pulse samples not yet opening an interval, sorted
        self._buf = np.empty((0, n_channels), dtype=dtype)
        self._ts = np.empty(0)
        self._n_seen = 0

    @property
    def samples_seen(self) -> int:
        return self._n_seen

    def push(self, samples: np.ndarray, timestamps: np.ndarray, pulse_samples=()) -> list[tuple[Interval, list[float]]]:
        """Consume a chunk and the absolute sample indices of the pulses in it; return the completed intervals,
        each with the times of the pulses that open it (empty for windows).

        The chunk is copied once (after the samples left over from the previous chunk); the intervals' arrays
        are consecutive, disjoint views of that copy (no further copy per interval)."""
        n = samples.shape[0]
        pending = self._pending
        lead = self.lead
        for p in pulse_samples.tolist() if isinstance(pulse_samples, np.ndarray) else pulse_samples:
            p = int(p)
            if p >= self._cur and (not pending or p > pending[-1]) and not (self._cur_pulse and p <= self._cur_p):
                if p - lead <= self._cur and not self._cur_pulse and self._buf.shape[0] == 0:
                    self._cur_pulse, self._cur_p = True, p  # a pulse at the start of the open interval opens it
                else:
                    pending.append(p)
        buf = _joined(self._buf, samples, self.dtype)
        ts = np.concatenate([self._ts, timestamps])
        self._n_seen += n
        n_seen, window, longest = self._n_seen, self.window, self.longest
        cur, cur_pulse, cur_p, index = self._cur, self._cur_pulse, self._cur_p, self.index
        base = cur  # the stream's sample at buf[0]
        at = 0  # next pending pulse
        out = []
        while True:
            limit = cur + (longest if cur_pulse else window)
            nxt = pending[at] if at < len(pending) else None
            # where the next pulse's interval begins: lead samples before it, after the open interval's pulse
            cut = None if nxt is None else max(nxt - lead, cur_p + 1 if cur_pulse else cur)
            end = limit if cut is None or limit < cut else cut
            if end == cur:  # a pulse at the start of a window: it opens the interval instead
                cur_pulse, cur_p = True, nxt
                at += 1
                continue
            # a limit is final once any pulse that would begin an interval before it has arrived
            if n_seen < (end if end == cut else end + lead):
                break
            a, b = cur - base, end - base
            opening = [float(ts[cur_p - base])] if cur_pulse else []
            out.append((Interval(index, cur, buf[a:b], ts[a:b]), opening))
            index += 1
            cur = end
            cur_pulse = end == cut
            if cur_pulse:
                cur_p = nxt
                at += 1
        del pending[:at]
        self._cur, self._cur_pulse, self._cur_p, self.index = cur, cur_pulse, cur_p, index
        self._buf, self._ts = buf[cur - base :], ts[cur - base :]
        return out

    def flush(self) -> list[tuple[Interval, list[float]]]:
        """The last, incomplete interval (end of a recording), if it has at least 2 samples."""
        if self._buf.shape[0] < 2:
            return []
        iv = Interval(self.index, self._cur, self._buf.copy(), self._ts.copy())
        self.index += 1
        p = self._cur_p - self._cur
        out = [(iv, [float(self._ts[p])] if self._cur_pulse and p < self._ts.shape[0] else [])]
        self._buf, self._ts = self._buf[:0], self._ts[:0]
        self._cur += iv.samples.shape[0]
        return out
