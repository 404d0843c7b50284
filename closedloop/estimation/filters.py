"""Streaming IIR filters, linear envelope and moving RMS for multichannel EMG.

Every streaming filter here takes chunks of any length (including 0 and 1 samples) shaped
``(n_samples, n_channels)`` and returns float64 arrays of the same shape. Feeding a signal in chunks gives
the same output as filtering the whole signal at once (the offline ``scipy.signal`` computation), because
the filter state is carried from chunk to chunk. The state is an ordinary attribute (``zi``, ``tail``) so
it can be inspected, and :meth:`reset` returns a filter to its initial state.

Filter design functions return second-order sections (``sos``, shape ``(n_sections, 6)``), the numerically
robust form of an IIR filter; frequencies are in Hz.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import ModuleType
from typing import Protocol, runtime_checkable

import numpy as np
from scipy import signal

from closedloop.errors import ConfigError
from closedloop.estimation._checks import check_freq, check_int, check_rate

try:  # the compiled kernel behind scipy.signal.sosfilt (present in every scipy >= 1.0)
    from scipy.signal._sosfilt import _sosfilt as _sosfilt_kernel
except ImportError:  # pragma: no cover
    _sosfilt_kernel = None

__all__ = [
    "Envelope",
    "FilterChain",
    "MovingRMS",
    "SOSFilter",
    "StreamingFilter",
    "bandpass_sos",
    "highpass_sos",
    "lowpass_sos",
    "notch_sos",
]

_MAX_ORDER = 10


@runtime_checkable
class StreamingFilter(Protocol):
    """What :class:`FilterChain` needs: ``step`` on ``(n, C)`` chunks and ``reset``."""

    def step(self, x: np.ndarray) -> np.ndarray: ...

    def reset(self) -> None: ...


# ---------------------------------------------------------------------------------------------------------
# validation helpers


def _as_chunk(x: np.ndarray, n_channels: int, who: str) -> np.ndarray:
    """``x`` as a float64 ``(n, n_channels)`` array; ValueError naming the shapes otherwise."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{who}: samples must be (n_samples, n_channels), got an array of shape {a.shape}")
    if a.shape[1] != n_channels:
        raise ValueError(f"{who}: configured for {n_channels} channels, got a chunk with {a.shape[1]} channels")
    return a


# ---------------------------------------------------------------------------------------------------------
# design


def bandpass_sos(low_hz: float, high_hz: float, rate_hz: float, order: int = 4) -> np.ndarray:
    """Butterworth band-pass filter as second-order sections.

    Parameters
    ----------
    low_hz, high_hz:
        Lower and upper -3 dB frequencies (Hz); ``0 < low_hz < high_hz < rate_hz / 2``.
    rate_hz:
        Sampling rate (Hz).
    order:
        Order of the low-pass prototype, 1..10 (the band-pass has twice as many poles).

    Returns
    -------
    numpy.ndarray
        ``(order, 6)`` second-order sections.
    """
    rate = check_rate(rate_hz)
    lo = check_freq(low_hz, "low_hz", rate)
    hi = check_freq(high_hz, "high_hz", rate)
    if not lo < hi:
        raise ConfigError(f"low_hz = {low_hz!r}, high_hz = {high_hz!r}: need low_hz < high_hz")
    n = check_int(order, "order", 1, _MAX_ORDER)
    return signal.butter(n, [lo, hi], btype="bandpass", output="sos", fs=rate)


def _butter_sos(btype: str, cutoff_hz: float, rate_hz: float, order: int) -> np.ndarray:
    rate = check_rate(rate_hz)
    fc = check_freq(cutoff_hz, "cutoff_hz", rate)
    n = check_int(order, "order", 1, _MAX_ORDER)
    return signal.butter(n, fc, btype=btype, output="sos", fs=rate)


def highpass_sos(cutoff_hz: float, rate_hz: float, order: int = 4) -> np.ndarray:
    """Butterworth high-pass filter as ``(ceil(order / 2), 6)`` second-order sections.

    ``cutoff_hz`` is the -3 dB frequency (``0 < cutoff_hz < rate_hz / 2``), ``order`` 1..10.
    """
    return _butter_sos("highpass", cutoff_hz, rate_hz, order)


def lowpass_sos(cutoff_hz: float, rate_hz: float, order: int = 4) -> np.ndarray:
    """Butterworth low-pass filter as ``(ceil(order / 2), 6)`` second-order sections.

    ``cutoff_hz`` is the -3 dB frequency (``0 < cutoff_hz < rate_hz / 2``), ``order`` 1..10.
    """
    return _butter_sos("lowpass", cutoff_hz, rate_hz, order)


def notch_sos(freq_hz: float, rate_hz: float, quality: float = 30.0, up_to_hz: float | None = None) -> np.ndarray:
    """Notch filters at a mains frequency and its harmonics, as second-order sections.

    One second-order IIR notch (``scipy.signal.iirnotch``) per harmonic ``k * freq_hz`` (k = 1, 2, ...)
    strictly below ``min(up_to_hz, 0.49 * rate_hz)``. Every notch has the same quality factor, so the
    -3 dB width of the k-th notch is ``k * freq_hz / quality``.

    Parameters
    ----------
    freq_hz:
        Fundamental frequency to remove (Hz), > 0 and below the limit above.
    rate_hz:
        Sampling rate (Hz).
    quality:
        Quality factor ``f0 / bandwidth`` of each notch, > 0.
    up_to_hz:
        Highest frequency (exclusive, Hz) at which a harmonic is still notched; None: ``0.49 * rate_hz``.

    Returns
    -------
    numpy.ndarray
        ``(n_harmonics, 6)`` second-order sections.
    """
    rate = check_rate(rate_hz)
    try:
        f0 = float(freq_hz)
    except (TypeError, ValueError):
        raise ConfigError(f"freq_hz = {freq_hz!r}: must be a number of Hz > 0") from None
    if not (math.isfinite(f0) and f0 > 0):
        raise ConfigError(f"freq_hz = {freq_hz!r}: must be a number of Hz > 0")
    try:
        q = float(quality)
    except (TypeError, ValueError):
        raise ConfigError(f"quality = {quality!r}: must be a finite number > 0") from None
    if not (math.isfinite(q) and q > 0):
        raise ConfigError(f"quality = {quality!r}: must be a finite number > 0")
    limit = 0.49 * rate
    if up_to_hz is not None:
        try:
            up = float(up_to_hz)
        except (TypeError, ValueError):
            raise ConfigError(f"up_to_hz = {up_to_hz!r}: must be None or a number of Hz > 0") from None
        if not (up > 0):  # NaN fails too
            raise ConfigError(f"up_to_hz = {up_to_hz!r}: must be None or a number of Hz > 0")
        limit = min(limit, up)
    if not f0 < limit:
        raise ConfigError(
            f"freq_hz = {freq_hz!r}: must lie below min(up_to_hz, 0.49 * rate_hz) = {limit:g} Hz, "
            "otherwise there is nothing to notch"
        )
    harmonics = f0 * np.arange(1, math.ceil(limit / f0) + 1)
    harmonics = harmonics[harmonics < limit]
    sections = []
    for fk in harmonics:  # one design call per harmonic (at most a few dozen), not per sample
        b, a = signal.iirnotch(float(fk), q, fs=rate)
        sections.append(np.concatenate([b, a]))
    return np.array(sections, dtype=np.float64)


# ---------------------------------------------------------------------------------------------------------
# streaming filters


class SOSFilter:
    """A streaming multichannel IIR filter in second-order sections.

    Parameters
    ----------
    sos:
        ``(n_sections, 6)`` second-order sections with ``a0 == 1`` (as from :func:`bandpass_sos`).
    n_channels:
        Number of channels; every chunk must have this many columns.
    initial:
        ``"zeros"``: the filter starts at rest (as ``scipy.signal.sosfilt`` without ``zi``).
        ``"first_sample"``: the state starts at ``sosfilt_zi(sos) * x[0]`` per channel, the steady state for a
        signal that had been constant at its first sample, which removes the start transient for filters
        that pass DC (low-pass, notch). For filters that block DC (band-pass, high-pass) it removes the
        step transient of the offset.

    Attributes
    ----------
    sos:
        The sections (a read-only copy).
    zi:
        Filter state, ``(n_sections, 2, n_channels)`` float64, in the layout of ``scipy.signal.sosfilt`` with
        ``axis=0``. With ``initial="first_sample"`` it is None until the first sample has been seen.
    kernels:
        Compiled kernels (:func:`closedloop.estimation.kernels.load`) to filter with: the channels of a chunk
        side by side, 2-3x faster from 8 channels on (fewer go through scipy), the same numbers. None
        (default): scipy's own kernel.
    """

    kernels: ModuleType | None = None

    def __init__(self, sos: np.ndarray, n_channels: int, initial: str = "zeros") -> None:
        s = np.array(sos, dtype=np.float64)
        if s.ndim != 2 or s.shape[1] != 6 or s.shape[0] < 1:
            raise ConfigError(f"sos: must be an (n_sections, 6) array with n_sections >= 1, got shape {s.shape}")
        if not np.isfinite(s).all():
            raise ConfigError("sos: coefficients must be finite")
        if not np.all(s[:, 3] == 1.0):
            raise ConfigError(f"sos: every section must have a0 == 1 (column 3), got {s[:, 3].tolist()}")
        if initial not in ("zeros", "first_sample"):
            raise ConfigError(f"initial = {initial!r}: allowed are 'zeros' and 'first_sample'")
        self._sos = s  # writable: scipy's sosfilt needs a writable buffer
        self.sos = s.copy()
        self.sos.setflags(write=False)
        self.n_channels = check_int(n_channels, "n_channels", 1)
        self.initial = initial
        self._zi_unit = signal.sosfilt_zi(s)  # (n_sections, 2): steady state for a unit constant input
        self._zi: np.ndarray | None = None  # (n_channels, n_sections, 2) C-contiguous: the kernel's layout
        self.reset()

    @property
    def zi(self) -> np.ndarray | None:
        """The filter state ``(n_sections, 2, n_channels)`` (a view of the channels-first store)."""
        return None if self._zi is None else self._zi.transpose(1, 2, 0)

    @zi.setter
    def zi(self, value: np.ndarray | None) -> None:
        self._zi = None if value is None else np.ascontiguousarray(np.transpose(value, (2, 0, 1)), dtype=np.float64)

    def reset(self) -> None:
        """Return to the initial state (at rest, or waiting for the first sample)."""
        if self.initial == "zeros":
            self._zi = np.zeros((self.n_channels, self.sos.shape[0], 2))
        else:
            self._zi = None

    def step(self, x: np.ndarray) -> np.ndarray:
        """Filter the next chunk.

        Parameters
        ----------
        x:
            ``(n_samples, n_channels)`` samples (any real dtype; n_samples may be 0).

        Returns
        -------
        numpy.ndarray
            ``(n_samples, n_channels)`` float64 filtered samples.
        """
        a = _as_chunk(x, self.n_channels, "SOSFilter.step")
        if a.shape[0] == 0:
            return np.empty((0, self.n_channels))
        # scipy.signal.sosfilt's own compiled kernel, without its per-call validation and axis shuffling
        # (two thirds of the cost of a short chunk): channels-first C-contiguous copies, filtered in place.
        # Equality with scipy.signal.sosfilt is what tests/test_filters.py checks.
        return self.step_channels_first(np.array(a.T, dtype=np.float64, order="C")).T

    def step_channels_first(self, xt: np.ndarray) -> np.ndarray:
        """Filter the next chunk given channels first, in place: the layout the compiled kernel works in.

        Parameters
        ----------
        xt:
            ``(n_channels, n_samples)`` C-contiguous float64 samples (n_samples may be 0); overwritten by the
            filtered samples.

        Returns
        -------
        numpy.ndarray
            ``xt`` itself. The same numbers as :meth:`step` on ``xt.T``.
        """
        if xt.dtype != np.float64 or xt.ndim != 2 or not xt.flags.c_contiguous or not xt.flags.writeable:
            raise ValueError("SOSFilter.step_channels_first: needs a writable C-contiguous float64 (C, n) array")
        if xt.shape[0] != self.n_channels:
            raise ValueError(
                f"SOSFilter.step_channels_first: configured for {self.n_channels} channels, got {xt.shape[0]}"
            )
        if xt.shape[1]:
            if self._zi is None:
                self._zi = xt[:, 0][:, None, None] * self._zi_unit
            self._filter_in_place(xt)
        return xt

    def _filter_in_place(self, xt: np.ndarray) -> None:
        """Run ``(C, n)`` C-contiguous samples through the sections, carrying ``zi``."""
        if self.kernels is not None and xt.shape[0] >= 8:  # fewer channels fill no SIMD lanes: scipy is faster
            self.kernels.sosfilt_channels_first(self._sos, xt, self._zi)
            return
        if _sosfilt_kernel is None:  # pragma: no cover - only if scipy moves its compiled kernel
            y, zf = signal.sosfilt(self._sos, xt, axis=1, zi=np.moveaxis(self.zi, 2, 1))
            xt[...] = y
            self.zi = np.moveaxis(zf, 1, 2)
            return
        _sosfilt_kernel(self._sos, xt, self._zi)


class Envelope:
    """Linear envelope: full-wave rectification followed by a Butterworth low-pass, streaming.

    The output has the units of the input. For a sine of amplitude ``A`` well above the cut-off it settles at
    the mean of ``|A sin|``, ``2 A / pi``.

    Parameters
    ----------
    rate_hz:
        Sampling rate (Hz).
    n_channels:
        Number of channels.
    cutoff_hz:
        -3 dB frequency of the low-pass (Hz), ``0 < cutoff_hz < rate_hz / 2``.
    order:
        Order of the low-pass, 1..10.

    Attributes
    ----------
    lowpass:
        The :class:`SOSFilter` (starting at rest) applied to ``|x|``; its ``zi`` is the envelope's state.
    """

    def __init__(self, rate_hz: float, n_channels: int, cutoff_hz: float = 6.0, order: int = 2) -> None:
        self.rate_hz = check_rate(rate_hz)
        self.n_channels = check_int(n_channels, "n_channels", 1)
        sos = lowpass_sos(cutoff_hz, self.rate_hz, order)  # validates cutoff_hz and order
        self.cutoff_hz = float(cutoff_hz)
        self.order = int(order)
        self.lowpass = SOSFilter(sos, self.n_channels)

    def reset(self) -> None:
        """Return to rest."""
        self.lowpass.reset()

    def step(self, x: np.ndarray) -> np.ndarray:
        """Envelope of the next ``(n_samples, n_channels)`` chunk, ``(n_samples, n_channels)`` float64."""
        a = _as_chunk(x, self.n_channels, "Envelope.step")
        return self.lowpass.step(np.abs(a))


class MovingRMS:
    """Root mean square over a sliding window of the last ``W`` samples, streaming.

    ``out[n] = sqrt(sum(x[n-W+1 .. n]**2) / W)`` with ``W = round(window_s * rate_hz)``; samples before the
    start count as zeros, so the first ``W - 1`` outputs ramp up. This equals the offline
    ``np.sqrt(np.clip(scipy.signal.lfilter(np.ones(W) / W, 1, x**2, axis=0), 0, None))``.

    The window sums are computed per chunk with cumulative sums inside blocks of ``W`` samples: every window
    is the sum of a suffix of one block and a prefix of the next, so no sum is ever a difference of two
    running totals. The result is accurate relative to each window's own power (no cancellation after loud
    passages, no drift over long sessions) and a non-finite sample affects only the windows that contain
    it. The cost per chunk is ``O(n_samples + W)``.

    Parameters
    ----------
    rate_hz:
        Sampling rate (Hz).
    n_channels:
        Number of channels.
    window_s:
        Window length (s); ``round(window_s * rate_hz)`` must be >= 1.

    Attributes
    ----------
    window:
        ``W``, the window length in samples.
    tail:
        ``(W - 1, n_channels)`` squares of the most recent ``W - 1`` samples (zeros before the start): the
        state carried to the next chunk.
    """

    def __init__(self, rate_hz: float, n_channels: int, window_s: float) -> None:
        self.rate_hz = check_rate(rate_hz)
        self.n_channels = check_int(n_channels, "n_channels", 1)
        try:
            w = float(window_s)
        except (TypeError, ValueError):
            raise ConfigError(f"window_s = {window_s!r}: must be a finite number of seconds > 0") from None
        if not (math.isfinite(w) and w > 0):
            raise ConfigError(f"window_s = {window_s!r}: must be a finite number of seconds > 0")
        n = round(w * self.rate_hz)
        if n < 1:
            raise ConfigError(
                f"window_s = {window_s!r}: shorter than one sample at {self.rate_hz:g} Hz "
                f"(need window_s >= {0.5 / self.rate_hz:g} s)"
            )
        self.window_s = w
        self.window = int(n)
        self.tail = np.zeros((self.window - 1, self.n_channels))

    def reset(self) -> None:
        """Forget all samples (the window is all zeros again)."""
        self.tail = np.zeros((self.window - 1, self.n_channels))

    def step(self, x: np.ndarray) -> np.ndarray:
        """Moving RMS of the next ``(n_samples, n_channels)`` chunk, ``(n_samples, n_channels)`` float64."""
        a = _as_chunk(x, self.n_channels, "MovingRMS.step")
        n = a.shape[0]
        if n == 0:
            return np.empty((0, self.n_channels))
        w = self.window
        ext = np.concatenate([self.tail, a * a])  # (w - 1 + n, C); window j covers ext[j : j + w]
        length = ext.shape[0]
        n_blocks = -(-length // w)
        blocks = np.zeros((n_blocks * w, self.n_channels))
        blocks[:length] = ext
        blocks = blocks.reshape(n_blocks, w, self.n_channels)
        prefix = np.cumsum(blocks, axis=1).reshape(-1, self.n_channels)  # sum from block start to i
        suffix = np.cumsum(blocks[:, ::-1], axis=1)[:, ::-1].reshape(-1, self.n_channels)  # sum from j to block end
        j = np.arange(n)  # first sample of each window, in ext
        i = j + (w - 1)  # last sample of each window
        # A window starting on a block boundary is that whole block (prefix only); otherwise it is the suffix
        # of the block containing j plus the prefix of the next block up to i.
        total = prefix[i] + np.where((j % w == 0)[:, None], 0.0, suffix[j])
        self.tail = ext[length - (w - 1) :].copy()
        return np.sqrt(np.maximum(total / w, 0.0))


class FilterChain:
    """Several streaming filters applied in order (the output of one is the input of the next).

    Parameters
    ----------
    filters:
        One or more objects with ``step(x) -> y`` and ``reset()`` (e.g. :class:`SOSFilter`).
    """

    def __init__(self, filters: Sequence[StreamingFilter]) -> None:
        fs = tuple(filters)
        if not fs:
            raise ConfigError("filters: a FilterChain needs at least one filter")
        for k, f in enumerate(fs):
            if not isinstance(f, StreamingFilter):
                raise ConfigError(f"filters[{k}] = {f!r}: must have step(x) and reset() methods")
        self.filters = fs

    def reset(self) -> None:
        """Reset every filter."""
        for f in self.filters:
            f.reset()

    def state(self) -> list:
        """A copy of every filter's state (``zi``), for :meth:`set_state`."""
        return [None if f.zi is None else np.array(f.zi) for f in self.filters]

    def set_state(self, state: list) -> None:
        """Put back the filters' state taken by :meth:`state`."""
        for f, zi in zip(self.filters, state, strict=True):
            f.zi = zi

    def step(self, x: np.ndarray) -> np.ndarray:
        """Run the chunk through every filter in order and return the last output."""
        y = x
        for f in self.filters:
            y = f.step(y)
        return y

    def step_channels_first(self, xt: np.ndarray) -> np.ndarray:
        """Run a ``(n_channels, n_samples)`` C-contiguous float64 chunk through every filter, in place.

        Filters with a ``step_channels_first`` method (:class:`SOSFilter`) filter ``xt`` in place; any other
        filter gets ``xt.T`` through its ``step``. Returns ``xt``.
        """
        for f in self.filters:
            cf = getattr(f, "step_channels_first", None)
            if cf is not None:
                cf(xt)
            else:
                xt[...] = np.asarray(f.step(xt.T)).T
        return xt
