"""Spectral fatigue indices of EMG and a streaming Welch spectrum of a gated signal.

Muscle fatigue slows muscle-fibre conduction and shifts EMG power to lower frequencies: the median (MDF)
and mean (MNF) frequency fall and the spectral index FInsm5 of Dimitrov et al. (2006) rises.
:func:`spectral_indices` computes all three from a power spectrum; :class:`StreamingWelch` keeps a running
Welch estimate of the last seconds of EMG, where samples that must not be measured (stimulation artifacts,
blanked M-waves) are zeros in time.
"""

from __future__ import annotations

import math
from types import ModuleType

import numpy as np
from numpy.lib.stride_tricks import as_strided, sliding_window_view
from scipy import fft as sp_fft
from scipy import signal

from closedloop.errors import ConfigError
from closedloop.estimation._checks import check_int, check_positive, check_rate

#: Channel-samples of Welch segments transformed at a time (each block's samples, windowed copy and spectrum
#: stay in the cache: a 64-channel block of 4 segments is 512 KiB).
_FFT_BLOCK_ELEMENTS = 1 << 16

__all__ = ["StreamingWelch", "spectral_indices"]


def _check_band(band_hz: tuple[float, float], nyquist: float | None = None) -> tuple[float, float]:
    upper = "" if nyquist is None else f" <= {nyquist:g} (rate/2)"
    try:
        lo, hi = (float(v) for v in band_hz)
    except (TypeError, ValueError):
        raise ConfigError(f"band_hz = {band_hz!r}: must be two frequencies (Hz) with 0 < low < high{upper}") from None
    ok = math.isfinite(lo) and math.isfinite(hi) and 0.0 < lo < hi and (nyquist is None or hi <= nyquist)
    if not ok:
        raise ConfigError(f"band_hz = {band_hz!r}: must be two frequencies (Hz) with 0 < low < high{upper}")
    return lo, hi


def spectral_indices(
    freqs_hz: np.ndarray, psd: np.ndarray, band_hz: tuple[float, float] = (20.0, 450.0)
) -> tuple[float | np.ndarray, float | np.ndarray, float | np.ndarray]:
    """Median frequency, mean frequency and FInsm5 of a power spectrum within a band.

    Only the bins with ``band_hz[0] <= f <= band_hz[1]`` are used; call them ``f_1 < ... < f_m`` with
    (non-negative) powers ``P_1 .. P_m`` and total ``T = sum(P_k)``.

    * MNF (mean frequency) ``= sum(f_k P_k) / T``.
    * MDF (median frequency): the cumulative power at bin ``k`` is taken at the bin centre with half of the
      bin's own power, ``C_k = P_1 + ... + P_(k-1) + P_k / 2`` (midpoint rule), and ``C(f)`` interpolates
      linearly between the points ``(f_k, C_k)``. MDF is the frequency where ``C(f) = T / 2``; when ``C``
      stays at exactly ``T / 2`` over an interval (e.g. two equal lines with empty bins between them) it is
      the middle of that interval. On a uniform grid a flat spectrum from ``a`` to ``b`` gives
      ``(a + b) / 2`` and a single line gives its frequency. Two lines at ``fa < fb`` with empty bins between
      them, on a grid of spacing ``df``, give ``fa + df * pb / pa`` when ``pa > pb`` and ``(fa + fb) / 2``
      when ``pa == pb``.
    * FInsm5 (Dimitrov et al. 2006, Med Sci Sports Exerc 38:1971) ``= sum(f_k^-1 P_k) / sum(f_k^5 P_k)``
      with ``f`` in Hz, in units of Hz^-6. It is scale-free in ``P`` (the units and scaling of the PSD cancel)
      but depends on the frequency unit; it increases with fatigue (while MDF and MNF decrease).

    Parameters
    ----------
    freqs_hz:
        ``(n_freqs,)`` increasing frequencies (Hz).
    psd:
        ``(n_freqs,)`` or ``(n_freqs, n_channels)`` non-negative power spectral density (any units/scaling).
    band_hz:
        ``(low, high)`` band in Hz with ``0 < low < high``; must contain at least one bin.

    Returns
    -------
    mdf_hz, mnf_hz, fi_nsm5:
        Floats for a 1-D ``psd``, ``(n_channels,)`` arrays for a 2-D one. NaN for every channel whose power in
        the band is zero (or not finite); no warnings are emitted.
    """
    lo, hi = _check_band(band_hz)
    f_all = np.asarray(freqs_hz, dtype=np.float64)
    p_all = np.asarray(psd, dtype=np.float64)
    if f_all.ndim != 1:
        raise ValueError(f"spectral_indices: freqs_hz must be 1-D, got shape {f_all.shape}")
    if p_all.ndim not in (1, 2) or p_all.shape[0] != f_all.shape[0]:
        raise ValueError(
            f"spectral_indices: psd must be (n_freqs,) or (n_freqs, n_channels) with n_freqs = {f_all.shape[0]}, "
            f"got shape {p_all.shape}"
        )
    one_d = p_all.ndim == 1
    p2 = p_all[:, None] if one_d else p_all
    mask = (f_all >= lo) & (f_all <= hi)
    m = int(mask.sum())
    if m == 0:
        span = f"{f_all.min():g}..{f_all.max():g} Hz" if f_all.size else "no frequencies"
        raise ConfigError(f"band_hz = {band_hz!r}: contains no frequency bin (the spectrum covers {span})")
    f = f_all[mask]
    mdf, mnf, fi = _band_indices(f, f**-1, f**5, p2[mask])
    if one_d:
        return float(mdf[0]), float(mnf[0]), float(fi[0])
    return mdf, mnf, fi


def _band_indices(
    f: np.ndarray, f_inv: np.ndarray, f5: np.ndarray, p: np.ndarray, kernels: ModuleType | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MDF, MNF and FInsm5, each ``(C,)``, of the in-band powers ``p`` ``(m, C)`` at the frequencies ``f``
    ``(m,)`` (``f_inv = f**-1``, ``f5 = f**5``), as :func:`spectral_indices` defines them. ``kernels``: the
    compiled kernels for the median frequencies (the same numbers), None: numpy."""
    n_ch = p.shape[1]
    total = p.sum(axis=0)
    ok = np.isfinite(total) & (total > 0)
    all_ok = bool(ok.all())
    safe_total = total if all_ok else np.where(ok, total, 1.0)

    mnf = (f @ p) / safe_total
    num = f_inv @ p
    den = f5 @ p
    if all_ok and bool((den > 0).all()):
        fi = num / den
    else:
        fi = np.divide(num, den, out=np.full(n_ch, np.nan), where=ok & (den > 0))

    half = 0.5 * total
    if kernels is not None:
        mdf = np.empty(n_ch)
        kernels.median_frequencies(f, np.ascontiguousarray(p), half, mdf)
    else:
        with np.errstate(invalid="ignore"):  # an infinite power: inf - inf in the running sums, NaN as it should
            mdf = _median_frequencies(f, p, half)
    if not all_ok:
        mdf = np.where(ok, mdf, np.nan)
        mnf = np.where(ok, mnf, np.nan)
        fi = np.where(ok, fi, np.nan)
    return mdf, mnf, fi


def _median_frequencies(f: np.ndarray, p: np.ndarray, half: np.ndarray) -> np.ndarray:
    """``(C,)`` the median frequencies of :func:`_band_indices` (``half``: half of each channel's total)."""
    m, n_ch = p.shape
    cols = np.arange(n_ch)
    # the cumulative power, channel by channel (rows: the same running sums, faster to search)
    pt = np.ascontiguousarray(p.T)  # (C, m)
    cum = np.cumsum(pt, axis=1) - 0.5 * pt  # C_k at the bin centres
    # Lower end: the first centre with C_k >= T/2, interpolated from the previous centre (C_{k-1} < T/2).
    k = np.argmax(cum >= half[:, None], axis=1)
    km1 = np.maximum(k - 1, 0)
    c0, c1 = cum[cols, km1], cum[cols, k]
    d = c1 - c0
    frac = np.divide(half - c0, d, out=np.zeros(n_ch), where=(k > 0) & (d > 0))
    f_low = f[km1] + frac * (f[k] - f[km1])
    # Upper end: the last centre with C_j <= T/2, interpolated towards the next centre (C_{j+1} > T/2).
    j = (m - 1) - np.argmax((cum <= half[:, None])[:, ::-1], axis=1)
    jp1 = np.minimum(j + 1, m - 1)
    c0, c1 = cum[cols, j], cum[cols, jp1]
    d = c1 - c0
    frac = np.divide(half - c0, d, out=np.zeros(n_ch), where=(j < m - 1) & (d > 0))
    f_high = f[j] + frac * (f[jp1] - f[j])
    return 0.5 * (f_low + f_high)


class StreamingWelch:
    """Welch power spectrum of the most recent ``window_s`` of a gated multichannel signal, streaming.

    Samples flagged invalid (e.g. blanked stimulation artifacts) are replaced by zeros, which keeps the
    timing of the valid samples: the estimate is then the true spectrum convolved with the spectrum of the
    gating sequence, which is nearly a delta when most samples are valid. Non-finite samples are treated
    as invalid too.

    Segments of ``nperseg`` samples with 50 % overlap are cut on the absolute sample grid: segment ``k``
    covers samples ``[k * hop, k * hop + nperseg)`` of the stream with ``hop = nperseg // 2``, exactly the
    segments ``scipy.signal.welch`` cuts from the whole signal. As soon as a segment is complete it is
    Hann-windowed and Fourier transformed, and its periodogram is pushed into a ring of the last ``K``
    periodograms, ``K = max(1, round((window_s * rate_hz - nperseg) / hop) + 1)``, unless fewer than half of
    its samples are valid (then it is dropped and counted in ``segments_rejected``).

    Scaling: one-sided power spectral density, ``P = c |rfft(w * x)|^2 / (rate_hz * sum(w^2))`` with
    ``c = 2`` except at 0 Hz and the Nyquist frequency (``c = 1``), in (input unit)^2 / Hz; the same as
    ``scipy.signal.welch(..., window='hann', detrend=False, scaling='density')``, so with all samples valid
    the mean over a full ring equals ``welch`` over the ring's samples. Gaps are not compensated: a
    periodogram of a segment with valid fraction ``v`` carries about ``v`` times the power.

    Parameters
    ----------
    rate_hz:
        Sampling rate (Hz).
    n_channels:
        Number of channels.
    nperseg:
        Segment length in samples, even and >= 4; None: the power of two nearest (on a log scale) to
        ``0.125 s * rate_hz`` (256 at 2048 Hz), at least 4.
    window_s:
        Span (s) of signal the ring of periodograms covers.
    band_hz:
        ``(low, high)`` band (Hz) of :meth:`indices`, ``0 < low < high <= rate_hz / 2``.
    min_segments:
        Fewest periodograms in the ring for which :meth:`indices` returns values, 1..K; None:
        ``max(1, K // 2)``.
    band_only:
        Keep only the periodogram bins inside ``band_hz`` (all that :meth:`indices` uses): ``freqs``, the ring
        and :meth:`psd` then cover those bins (there must be at least one).
    kernels:
        Compiled kernels (:func:`closedloop.estimation.kernels.load`) for the periodograms (their own FFT for
        segments of a power of two samples: the same powers to about 1e-15 of each periodogram's largest bin);
        None (default): numpy and scipy. An attribute, set after construction.

    Attributes
    ----------
    nperseg, hop, ring_size:
        Segment length, hop (``nperseg // 2``) and ``K``.
    freqs:
        ``(nperseg // 2 + 1,)`` frequencies of the periodogram bins (Hz); with ``band_only``, those in the band.
    buffer:
        ``(nperseg, n_channels)`` the last ``nperseg`` gated samples (zeros before the start); a view of
        the channels-first store.
    buffer_valid:
        ``(nperseg,)`` bool validity of those samples.
    n_samples:
        Samples received since the start (or :meth:`reset`).
    ring:
        ``(K, n_freqs, n_channels)`` periodograms; slots ``0 .. n_segments - 1`` are filled.
    ring_valid_fraction:
        ``(K,)`` valid fraction of the segment in each slot (NaN for empty slots).
    ring_pos:
        Slot the next periodogram goes into.
    segments_pushed, segments_rejected:
        Segments pushed into the ring and segments dropped for a valid fraction below 0.5.
    """

    kernels: ModuleType | None = None

    def __init__(
        self,
        rate_hz: float,
        n_channels: int,
        nperseg: int | None = None,
        window_s: float = 1.0,
        band_hz: tuple[float, float] = (20.0, 450.0),
        min_segments: int | None = None,
        band_only: bool = False,
    ) -> None:
        rate = check_rate(rate_hz)
        self.rate_hz = rate
        self.n_channels = check_int(n_channels, "n_channels", 1)
        if nperseg is None:
            nps = max(4, 2 ** round(math.log2(0.125 * rate)))
        else:
            nps = check_int(nperseg, "nperseg", 4)
            if nps % 2:
                raise ConfigError(f"nperseg = {nperseg!r}: must be even (50 % overlap needs a whole hop)")
        w_s = check_positive(window_s, "window_s")
        self.band_hz = _check_band(band_hz, rate / 2.0)
        self.nperseg = nps
        self.hop = nps // 2
        self.window_s = w_s
        self.ring_size = max(1, round((w_s * rate - nps) / self.hop) + 1)
        if min_segments is None:
            self.min_segments = max(1, self.ring_size // 2)
        else:
            self.min_segments = check_int(min_segments, "min_segments", 1, self.ring_size)
        freqs = sp_fft.rfftfreq(nps, 1.0 / rate)
        self._bins = slice(None)  # the bins kept
        if band_only:
            in_band = np.flatnonzero((freqs >= self.band_hz[0]) & (freqs <= self.band_hz[1]))
            if not in_band.size:
                raise ConfigError(f"band_hz = {band_hz!r}: contains no frequency bin of nperseg = {nps}")
            self._bins = slice(int(in_band[0]), int(in_band[-1]) + 1)
        self.freqs = freqs[self._bins]
        self.window = signal.get_window("hann", nps)  # periodic Hann, as scipy.signal.welch uses
        scale = np.full(freqs.shape[0], 2.0 / (rate * float(np.sum(self.window**2))))
        scale[0] /= 2.0
        scale[-1] /= 2.0  # nperseg is even: the last bin is the Nyquist frequency
        # the density scaling of all but the 0 Hz and Nyquist bins, folded into the window (its square root)
        self._window_scaled = self.window * math.sqrt(scale[1])
        self._halved = [i for i, f in enumerate(self.freqs) if f in (0.0, freqs[-1])]  # 0 Hz, Nyquist (kept)
        self._tables: tuple[ModuleType, tuple[np.ndarray, ...]] | None = None  # see _fft_tables
        self.reset()

    @property
    def n_segments(self) -> int:
        """Number of periodograms in the ring (0..K)."""
        return self._n_in_ring

    def reset(self) -> None:
        """Forget all samples and periodograms."""
        self._buf = np.zeros((self.n_channels, self.nperseg))  # channels first, as the FFT reads it
        self.buffer_valid = np.zeros(self.nperseg, dtype=bool)
        self.n_samples = 0
        self._ring = np.zeros((self.ring_size, self.n_channels, self.freqs.shape[0]))  # channels first
        self.ring_valid_fraction = np.full(self.ring_size, np.nan)
        self.ring_pos = 0
        self._n_in_ring = 0
        self.segments_pushed = 0
        self.segments_rejected = 0
        self._ring_sum = np.zeros((self.n_channels, self.freqs.shape[0]))
        self._pend: list[tuple[np.ndarray, np.ndarray]] = []  # channels-first gated chunks and their validity
        self._pend_n = 0
        self._next_end = self.nperseg  # stream index (exclusive) where the next segment ends

    @property
    def buffer(self) -> np.ndarray:
        """``(nperseg, n_channels)`` the last ``nperseg`` gated samples as of the last completed segment."""
        return self._buf.T

    @property
    def ring(self) -> np.ndarray:
        """``(K, n_freqs, n_channels)`` the ring of periodograms (a view of the channels-first store)."""
        return self._ring.transpose(0, 2, 1)

    def step(self, x: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Append samples; compute and push the periodograms of the segments they complete.

        Parameters
        ----------
        x:
            ``(n_samples, n_channels)`` samples (n_samples may be 0).
        valid:
            ``(n_samples,)`` bool, False for samples to gate out (replaced by 0); None: all valid.
        """
        a = np.asarray(x, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != self.n_channels:
            raise ValueError(
                f"StreamingWelch.step: configured for (n_samples, {self.n_channels}) chunks, got shape {a.shape}"
            )
        self.step_channels_first(a.T, valid)

    def step_channels_first(self, xt: np.ndarray, valid: np.ndarray | None = None) -> None:
        """:meth:`step` for samples given channels first, ``(n_channels, n_samples)`` (not modified)."""
        self._step(xt, valid, False)

    def push_channels_first(
        self, xt: np.ndarray, valid: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`step_channels_first`, returning what the chunk pushed (the spectra in between, for a batch
        of intervals whose indices are due at several points of the chunk).

        Returns
        -------
        ends:
            ``(S,)`` int64, the end (stream sample, exclusive) of every segment the chunk completed.
        kept:
            ``(S,)`` bool, whether each went into the ring (at least half of its samples valid).
        pgrams:
            ``(kept.sum(), n_channels, n_freqs)`` the periodograms of the kept ones, in order, all of them
            (the ring holds only the last ``ring_size``).
        """
        out = self._step(xt, valid, True)
        empty = np.empty((0, self.n_channels, self.freqs.shape[0]))
        if out is None:
            return np.empty(0, np.int64), np.empty(0, bool), empty
        ends, keep, pgrams = out
        return ends, keep, empty if pgrams is None else pgrams

    def ring_in_order(self) -> np.ndarray:
        """``(n_segments, n_channels, n_freqs)`` a copy of the periodograms in the ring, oldest first."""
        k, size = self._n_in_ring, self.ring_size
        return self._ring[(self.ring_pos - k + np.arange(k)) % size]

    def _step(
        self, xt: np.ndarray, valid: np.ndarray | None, keep_all: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
        """Append samples; push the periodograms of the segments they complete (see push_channels_first:
        None where no segment completes; periodograms None where none is kept)."""
        a = np.asarray(xt, dtype=np.float64)
        if a.ndim != 2 or a.shape[0] != self.n_channels:
            raise ValueError(
                f"StreamingWelch.step: configured for {self.n_channels} channels, got a chunk of shape {a.T.shape}"
            )
        n = a.shape[1]
        if valid is None:
            v = np.ones(n, dtype=bool)
        else:
            v = np.asarray(valid, dtype=bool)
            if v.shape != (n,):
                raise ValueError(f"StreamingWelch.step: valid must have shape ({n},), got {v.shape}")
        if n == 0:
            return None
        gated = None  # the gated samples; None: a * v, written where they are needed
        finite = np.isfinite(a)
        if not finite.all():
            v = v & finite.all(axis=0)
            gated = np.where(v, a, 0.0)

        nps, hop = self.nperseg, self.hop
        n1 = self.n_samples + n
        # fast path: no segment completes yet; keep the samples until one does (buffer is brought up to date
        # then: it always holds the last nperseg samples as of the last completed segment)
        if n1 < self._next_end:
            self._pend.append((np.multiply(a, v) if gated is None else gated, v))
            self._pend_n += n
            self.n_samples = n1
            return None
        n0 = self.n_samples - self._pend_n  # stream index of the first sample after the buffer
        ext = np.empty((self.n_channels, nps + self._pend_n + n))  # stream samples [n0 - nperseg, n1)
        ext[:, :nps] = self._buf
        at = nps
        for g, _ in self._pend:
            ext[:, at : at + g.shape[1]] = g
            at += g.shape[1]
        if gated is None:
            np.multiply(a, v, out=ext[:, at:])
        else:
            ext[:, at:] = gated
        ext_valid = np.concatenate([self.buffer_valid, *(b for _, b in self._pend), v])
        self._pend, self._pend_n = [], 0
        # Segment ends (exclusive, in stream samples) completed by this chunk: nperseg + k * hop in (n0, n1].
        first_k = max(0, -(-(n0 + 1 - nps) // hop))
        ends = np.arange(nps + first_k * hop, n1 + 1, hop)
        self._buf = ext[:, -nps:].copy()
        self.buffer_valid = ext_valid[-nps:].copy()
        self.n_samples = n1
        self._next_end = nps + max(0, -(-(n1 + 1 - nps) // hop)) * hop
        if ends.size == 0:
            return None
        starts = ends - n0  # segment start in ext coordinates (ext index = stream index - n0 + nperseg)
        cvalid = np.concatenate([[0], np.cumsum(ext_valid, dtype=np.int64)])
        frac = (cvalid[starts + nps] - cvalid[starts]) / nps
        keep = frac >= 0.5
        self.segments_rejected += int((~keep).sum())
        self.segments_pushed += int(keep.sum())
        starts, frac = starts[keep], frac[keep]
        if not keep_all:  # only those the ring will hold
            starts, frac = starts[-self.ring_size :], frac[-self.ring_size :]
        if starts.size == 0:
            return ends, keep, None
        n_new = starts.size
        pgram = np.empty((n_new, self.n_channels, self.freqs.shape[0]))
        tables = self._fft_tables()
        if tables is not None:  # compiled: the kernel's own FFT, windowing the samples as it loads them
            at = np.ascontiguousarray(starts, dtype=np.int64)
            self.kernels.welch_periodograms(ext, at, self._window_scaled, self._bins.start or 0, pgram, *tables)
        else:
            self._periodograms(ext, starts, pgram)
        for i in self._halved:  # ... with half the scale at 0 Hz and the Nyquist frequency
            pgram[..., i] *= 0.5
        self._into_ring(pgram[-self.ring_size :], frac[-self.ring_size :])
        return ends, keep, pgram

    def _periodograms(self, ext: np.ndarray, starts: np.ndarray, pgram: np.ndarray) -> None:
        """``pgram`` ``(S, C, F)``: the powers of the windowed segments of ``ext`` ``(C, L)`` beginning at
        ``starts`` ``(S,)``, with scipy's FFT, the bins kept (density scaling except at 0 Hz and Nyquist)."""
        nps, hop, n_new = self.nperseg, self.hop, starts.size
        if n_new == 1 or int(starts[-1] - starts[0]) == (n_new - 1) * hop:  # consecutive: a strided view
            row, col = ext.strides
            segs = as_strided(ext[:, starts[0] :], (n_new, self.n_channels, nps), (hop * col, row, col))
        else:
            segs = sliding_window_view(ext, nps, axis=1)[:, starts].transpose(1, 0, 2)
        # a few segments at a time: their samples, windowed samples and spectra stay in the CPU's cache
        step = max(1, _FFT_BLOCK_ELEMENTS // (self.n_channels * nps))
        windowed = np.empty((min(step, n_new), self.n_channels, nps))
        for i in range(0, n_new, step):
            j = min(i + step, n_new)
            w = np.multiply(segs[i:j], self._window_scaled, out=windowed[: j - i])
            spec = sp_fft.rfft(w, axis=-1)[..., self._bins]  # (segments, C, n_freqs); overwrite_x is 6x slower
            np.multiply(spec.real, spec.real, out=pgram[i:j])
            pgram[i:j] += np.square(spec.imag)  # density, one-sided: ...

    def _fft_tables(self) -> tuple[np.ndarray, ...] | None:
        """The compiled FFT's tables for this segment length and these bins (made once per kernels module);
        None without kernels or for a segment length that is not a power of two (scipy's FFT then)."""
        k, nps = self.kernels, self.nperseg
        if k is None or nps < 4 or nps & (nps - 1):
            return None
        if self._tables is None or self._tables[0] is not k:
            self._tables = (k, k.fft_tables(nps, self._bins.start or 0, self.freqs.shape[0]))
        return self._tables[1]

    def _into_ring(self, pgram: np.ndarray, frac: np.ndarray) -> None:
        """Put at most ``ring_size`` new periodograms (and their valid fractions) into the ring."""
        n_new = pgram.shape[0]
        # into the ring: slots ring_pos, ring_pos + 1, ... (wrapping), the running sum updated
        pos, size = self.ring_pos, self.ring_size
        head = min(n_new, size - pos)
        for slot, new in ((slice(pos, pos + head), pgram[:head]), (slice(0, n_new - head), pgram[head:])):
            filled = self._ring[slot][: max(0, self._n_in_ring - slot.start)]
            if filled.shape[0]:
                self._ring_sum -= filled.sum(axis=0)
            self._ring[slot] = new
        self._ring_sum += pgram.sum(axis=0)
        self.ring_valid_fraction[(pos + np.arange(n_new)) % size] = frac
        self.ring_pos = (pos + n_new) % size
        self._n_in_ring = min(size, self._n_in_ring + n_new)
        if self.ring_pos < n_new:  # wrapped: recompute the running sum exactly (no drift)
            self._ring_sum = self._ring[: self._n_in_ring].sum(axis=0)

    def psd(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(freqs, psd)``: ``(n_freqs,)`` Hz and the ``(n_freqs, n_channels)`` mean periodogram over the ring.

        None while the ring is empty. Units: (input unit)^2 / Hz, one-sided density (see the class docstring).
        """
        if self._n_in_ring == 0:
            return None
        return self.freqs.copy(), self._ring_sum.T / self._n_in_ring

    def indices(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """``(mdf_hz, mnf_hz, fi_nsm5)``, each ``(n_channels,)``, of :meth:`psd` over ``band_hz``.

        None while fewer than ``min_segments`` periodograms are in the ring. See :func:`spectral_indices`.
        """
        if self._n_in_ring < self.min_segments:
            return None
        mean = self._ring_sum.T / self._n_in_ring
        mdf, mnf, fi = spectral_indices(self.freqs, mean, self.band_hz)
        return np.asarray(mdf), np.asarray(mnf), np.asarray(fi)
