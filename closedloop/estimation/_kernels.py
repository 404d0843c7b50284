"""The numba kernels behind :mod:`closedloop.estimation.kernels` (import that module, not this one: importing
this one starts numba).

Every kernel is compiled for the exact argument types it is called with (explicit signatures: a call with
other types is an error, never a silent compile in the middle of a replay) and cached on disk. Each one does
the arithmetic of the numpy code it replaces in the same order, without fast-math, so the results are
bitwise the same (except :func:`nlms_weights` and :func:`welch_periodograms`, see there).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = [
    "advance_lags",
    "fft_tables",
    "largest_jumps",
    "median_frequencies",
    "mwave_measures",
    "nlms_weights",
    "power_spectrum",
    "prediction_error",
    "sosfilt_channels_first",
    "warm_up",
    "weigh_ring_means",
    "welch_periodograms",
]

_F8_2D = numba.float64[:, ::1]
_F8_3D = numba.float64[:, :, ::1]
_I8_1D = numba.int64[::1]
_F8_1D = numba.float64[::1]
_I8_2D = numba.int64[:, ::1]

#: Samples per tile of :func:`sosfilt_channels_first`: a tile of 64 channels (32 KiB) stays in the L1/L2 cache.
_TILE = 64


@numba.njit(numba.void(_F8_2D, _F8_2D, _F8_3D), cache=True, nogil=True, boundscheck=False)
def sosfilt_channels_first(sos, xt, zi):  # pragma: no cover - compiled
    """``scipy.signal.sosfilt`` of ``(C, N)`` samples along their rows, in place, carrying the state ``zi``
    ``(C, n_sections, 2)`` (the layout of scipy's own kernel): the same direct form II transposed, the same
    operations per sample, so the same numbers. The channels of a tile of samples are filtered side by side
    (SIMD): the tile is turned samples-first, filtered, and turned back."""
    n_ch, n = xt.shape
    n_sec = sos.shape[0]
    z = np.empty((n_sec, 2, n_ch))
    for c in range(n_ch):
        for s in range(n_sec):
            z[s, 0, c] = zi[c, s, 0]
            z[s, 1, c] = zi[c, s, 1]
    tile = np.empty((_TILE, n_ch))
    for i0 in range(0, n, _TILE):
        m = min(_TILE, n - i0)
        for c in range(n_ch):
            for i in range(m):
                tile[i, c] = xt[c, i0 + i]
        for s in range(n_sec):
            b0, b1, b2, a1, a2 = sos[s, 0], sos[s, 1], sos[s, 2], sos[s, 4], sos[s, 5]
            z0 = z[s, 0]
            z1 = z[s, 1]
            for i in range(m):
                row = tile[i]
                for c in range(n_ch):
                    xi = row[c]
                    yi = b0 * xi + z0[c]
                    z0[c] = b1 * xi - a1 * yi + z1[c]
                    z1[c] = b2 * xi - a2 * yi
                    row[c] = yi
        for c in range(n_ch):
            for i in range(m):
                xt[c, i0 + i] = tile[i, c]
    for c in range(n_ch):
        for s in range(n_sec):
            zi[c, s, 0] = z[s, 0, c]
            zi[c, s, 1] = z[s, 1, c]


@numba.njit(
    numba.void(_F8_2D, _F8_2D, _I8_1D, _I8_1D, _I8_2D, _I8_1D, _F8_3D, _F8_2D),
    cache=True,
    nogil=True,
    boundscheck=False,
)
def prediction_error(y, src, lo, hi, shift, n_past, w, gain):  # pragma: no cover - compiled
    """The normalised prediction errors of pulse segments, in place: for segment ``p`` and every sample
    ``t`` of ``[lo[p], hi[p])`` of the ``(C, N)`` signal ``y``, ``y[c, t] - src[c, t + shift[p, j]] * w[c, p, j]``
    subtracted lag by lag (``j < n_past[p]``), then divided by ``gain[c, p]`` (what
    :meth:`~closedloop.estimation.volitional.VolitionalEstimator.segments` computes with numpy, in the same
    order). ``src`` ``(C, M)`` holds the past segments' samples before any prediction error replaced them."""
    n_ch = y.shape[0]
    for p in range(lo.shape[0]):
        a, b, m = lo[p], hi[p], n_past[p]
        for c in range(n_ch):
            row, past, g = y[c], src[c], gain[c, p]
            if m == 1:  # one pass for the usual one or two lags
                w0, s0 = w[c, p, 0], shift[p, 0]
                for t in range(a, b):
                    row[t] = (row[t] - past[t + s0] * w0) / g
            elif m == 2:
                w0, w1, s0, s1 = w[c, p, 0], w[c, p, 1], shift[p, 0], shift[p, 1]
                for t in range(a, b):
                    row[t] = ((row[t] - past[t + s0] * w0) - past[t + s1] * w1) / g
            else:
                for j in range(m):
                    wj, sj = w[c, p, j], shift[p, j]
                    for t in range(a, b):
                        row[t] -= past[t + sj] * wj
                for t in range(a, b):
                    row[t] /= g


@numba.njit(
    numba.void(_F8_2D, _I8_1D, _F8_1D, _I8_1D, _I8_1D, _F8_2D, _F8_3D), cache=True, nogil=True, boundscheck=False
)
def advance_lags(lags, rows, decay, bounds, group_lag, sums, out):  # pragma: no cover - compiled
    """The running prediction-filter response over ``U`` steps, in place: at step ``u`` the rows ``rows`` of
    ``lags`` ``(L, C)`` are multiplied by ``decay[u]``, then ``sums[g]`` is added to row ``group_lag[g]`` for
    ``bounds[u] <= g < bounds[u + 1]``; where ``out`` ``(U, len(rows), C)`` is not empty, ``out[u]`` gets the rows
    after step ``u``: what the estimator's numpy loop does (``lags[rows] *= decay[u]``, then ``+=``)."""
    n_ch = lags.shape[1]
    keep = out.shape[0] > 0
    for u in range(decay.shape[0]):
        d = decay[u]
        for r in rows:
            row = lags[r]
            for c in range(n_ch):
                row[c] *= d
        for g in range(bounds[u], bounds[u + 1]):
            row, add = lags[group_lag[g]], sums[g]
            for c in range(n_ch):
                row[c] += add[c]
        if keep:
            for i in range(rows.shape[0]):
                row, dst = lags[rows[i]], out[u, i]
                for c in range(n_ch):
                    dst[c] = row[c]


@numba.njit(numba.void(_F8_2D, _F8_1D), cache=True, nogil=True, boundscheck=False)
def largest_jumps(x, out):  # pragma: no cover - compiled
    """``out[i] = max over channels of |x[c, i] - x[c, i - 1]|`` for ``i >= 1`` of ``(C, N)`` samples (``out[0]``
    is left as it is): what ``np.abs(np.diff(x, axis=1)).max(axis=0)`` gives, in one pass."""
    n_ch, n = x.shape
    for i in range(1, n):
        out[i] = abs(x[0, i] - x[0, i - 1])
    for c in range(1, n_ch):
        row = x[c]
        for i in range(1, n):
            out[i] = max(out[i], abs(row[i] - row[i - 1]))


@numba.njit(numba.void(_F8_3D, _F8_2D, _F8_2D, _F8_3D, _I8_2D), cache=True, nogil=True, boundscheck=False)
def mwave_measures(window, inside, base, out, first_max):  # pragma: no cover - compiled
    """M-wave measures of ``(C, W, P)`` raw (finite) windows less their ``(C, P)`` baselines; ``inside``
    ``(W, P)`` is 1.0 for the samples in the interval, 0.0 for the repeats of the first one that pad a cut
    window. Into ``out[0]`` the peak-to-peak, ``out[1]`` the rectified sum over the samples inside (each
    ``(C, P)``), into ``first_max`` the first sample of the largest absolute deviation: the numbers of the
    numpy reductions over W (one sample after the other)."""
    n_ch, width, n_p = window.shape
    top = np.empty(n_p)
    bottom = np.empty(n_p)
    best = np.empty(n_p)
    for c in range(n_ch):
        total, first = out[1, c], first_max[c]
        for p in range(n_p):
            v = window[c, 0, p] - base[c, p]
            top[p] = v
            bottom[p] = v
            best[p] = abs(v)
            total[p] = abs(v) * inside[0, p]
            first[p] = 0
        for w in range(1, width):
            for p in range(n_p):
                v = window[c, w, p] - base[c, p]
                top[p] = max(top[p], v)
                bottom[p] = min(bottom[p], v)
                d = abs(v)
                if d > best[p]:
                    best[p] = d
                    first[p] = w
                total[p] += d * inside[w, p]
        for p in range(n_p):
            out[0, c, p] = top[p] - bottom[p]


@numba.njit(numba.void(_F8_1D, _F8_2D, _F8_1D, _F8_1D), cache=True, nogil=True, boundscheck=False)
def median_frequencies(f, p, half, out):  # pragma: no cover - compiled
    """The median frequency of every column of the in-band powers ``p`` ``(m, N)`` at the frequencies ``f``
    ``(m,)``, with ``half`` ``(N,)`` half of each column's total, into ``out`` ``(N,)``: the midpoint-rule
    cumulative power ``C_k = P_1 + ... + P_k - P_k / 2`` (a running sum, as ``np.cumsum``), the first centre
    with ``C_k >= half`` interpolated from the one before, the last with ``C_j <= half`` towards the one after,
    and the middle of the two: the arithmetic of the numpy code in ``spectral._band_indices`` (``argmax`` of
    no match is 0 there too)."""
    m, n = p.shape
    cum = np.empty(m)
    for c in range(n):
        s = p[0, c]
        cum[0] = s - 0.5 * p[0, c]
        for i in range(1, m):
            s += p[i, c]
            cum[i] = s - 0.5 * p[i, c]
        h = half[c]
        k = 0
        for i in range(m):
            if cum[i] >= h:
                k = i
                break
        km1 = max(k - 1, 0)
        c0 = cum[km1]
        d = cum[k] - c0
        frac = (h - c0) / d if k > 0 and d > 0 else 0.0
        f_low = f[km1] + frac * (f[k] - f[km1])
        j = m - 1
        for i in range(m - 1, -1, -1):
            if cum[i] <= h:
                j = i
                break
        jp1 = min(j + 1, m - 1)
        c0 = cum[j]
        d = cum[jp1] - c0
        frac = (h - c0) / d if j < m - 1 and d > 0 else 0.0
        f_high = f[j] + frac * (f[jp1] - f[j])
        out[c] = 0.5 * (f_low + f_high)


@numba.njit(numba.void(_F8_3D, _I8_1D, _I8_1D, _F8_3D), cache=True, nogil=True, boundscheck=False)
def weigh_ring_means(ring, upto, counts, weighted):  # pragma: no cover - compiled
    """``weighted[:, u] *= mean of ring[upto[u] - counts[u] : upto[u]]`` for every update ``u``, with ``ring``
    ``(K, C, F)`` periodograms and ``weighted`` ``(F, U, C)``: the sum one periodogram after the other (as numpy
    sums over the first axis), divided by the count, then the product; numpy's numbers."""
    n_f, n_u, n_ch = weighted.shape
    acc = np.empty((n_ch, n_f))
    for u in range(n_u):
        m = counts[u]
        j0 = upto[u] - m
        acc[:, :] = ring[j0]
        for k in range(j0 + 1, upto[u]):
            acc += ring[k]
        for f in range(n_f):
            for c in range(n_ch):
                weighted[f, u, c] *= acc[c, f] / m


@numba.njit(numba.void(numba.complex128[:, :, ::1], numba.int64, _F8_3D), cache=True, nogil=True, boundscheck=False)
def power_spectrum(spec, first_bin, out):  # pragma: no cover - compiled
    """``out[s, c, f] = re^2 + im^2`` of ``spec[s, c, first_bin + f]`` (``re * re`` plus ``im * im``, as numpy
    computes ``spec.real * spec.real`` then adds ``np.square(spec.imag)``), in one pass."""
    n_s, n_ch, n_f = out.shape
    for i in range(n_s):
        for c in range(n_ch):
            row, dst = spec[i, c], out[i, c]
            for f in range(n_f):
                z = row[first_bin + f]
                dst[f] = z.real * z.real + z.imag * z.imag


#: Channels transformed side by side by :func:`welch_periodograms` (two AVX-512 or four AVX2 registers wide).
_FFT_LANES = 16


@numba.njit(
    numba.void(_F8_2D, _I8_1D, _F8_1D, numba.int64, _F8_3D, _F8_1D, _F8_1D, _I8_1D, _F8_1D, _F8_1D),
    cache=True,
    nogil=True,
    boundscheck=False,
)
def welch_periodograms(x, starts, window, first_bin, out, tw_re, tw_im, bitrev, post_re, post_im):  # pragma: no cover
    """The powers ``|X_k|^2`` of the windowed segments' real DFTs, bins ``first_bin ..`` (as many as ``out`` has),
    of the ``(C, L)`` channels-first samples ``x``: segment ``s`` is ``x[:, starts[s] : starts[s] + N]`` times
    ``window`` ``(N,)`` (``N`` a power of two, at least 4), into ``out`` ``(S, C, F)``.

    The one kernel that is its own algorithm rather than numpy's arithmetic: scipy's FFT (pocketfft) transforms
    one channel at a time with 2-wide vectors; here ``_FFT_LANES`` channels go through the butterflies side by
    side, with the window applied as the samples are loaded, so a segment's 64 channels cost about half as much.
    The real DFT of ``N`` samples is the complex DFT of the ``N / 2`` pairs ``x[2n] + i x[2n + 1]`` (iterative
    radix 2, bit-reversed input, twiddles ``tw = exp(-2 pi i j / (N / 2))``, ``j < N / 4``), untangled per bin
    with ``post = exp(-2 pi i k / N)``. Agrees with ``|scipy.fft.rfft|^2`` to about 1e-15 of each periodogram's
    largest bin (rounding: a different order of the same sums)."""
    n_ch = x.shape[0]
    n = window.shape[0]
    m = n // 2
    n_f = out.shape[2]
    re = np.zeros((m, _FFT_LANES))
    im = np.zeros((m, _FFT_LANES))
    pw = np.empty((n_f, _FFT_LANES))
    for s in range(starts.shape[0]):
        a = starts[s]
        for c0 in range(0, n_ch, _FFT_LANES):
            g = min(_FFT_LANES, n_ch - c0)
            for c in range(g):  # load: pairs of windowed samples, in bit-reversed order
                row = x[c0 + c, a : a + n]
                for i in range(m):
                    r = bitrev[i]
                    re[r, c] = row[2 * i] * window[2 * i]
                    im[r, c] = row[2 * i + 1] * window[2 * i + 1]
            for c in range(g, _FFT_LANES):  # lanes past the last channel: zeros (computed, never stored)
                for i in range(m):
                    re[i, c] = 0.0
                    im[i, c] = 0.0
            half = 1
            while half < m:  # radix-2 stages
                stride = m // (2 * half)
                for j in range(half):
                    wr = tw_re[j * stride]
                    wi = tw_im[j * stride]
                    for k0 in range(0, m, 2 * half):
                        r1, i1 = re[k0 + j], im[k0 + j]
                        r2, i2 = re[k0 + j + half], im[k0 + j + half]
                        for c in range(_FFT_LANES):
                            ar, ai = r2[c], i2[c]
                            xr = ar * wr - ai * wi
                            xi = ar * wi + ai * wr
                            br, bi = r1[c], i1[c]
                            r2[c] = br - xr
                            i2[c] = bi - xi
                            r1[c] = br + xr
                            i1[c] = bi + xi
                half *= 2
            for f in range(n_f):  # X_k = E_k + exp(-2 pi i k / N) O_k, E and O the even and odd samples' DFTs
                k = first_bin + f
                za_r, za_i = re[k % m], im[k % m]
                zb_r, zb_i = re[(m - k) % m], im[(m - k) % m]
                cr, ci = post_re[f], post_im[f]
                p = pw[f]
                for c in range(_FFT_LANES):
                    zr, zi = za_r[c], za_i[c]
                    yr, yi = zb_r[c], -zb_i[c]
                    er, ei = 0.5 * (zr + yr), 0.5 * (zi + yi)
                    o_r, o_i = 0.5 * (zi - yi), -0.5 * (zr - yr)
                    xr = er + cr * o_r - ci * o_i
                    xi = ei + cr * o_i + ci * o_r
                    p[c] = xr * xr + xi * xi
            for c in range(g):
                dst = out[s, c0 + c]
                for f in range(n_f):
                    dst[f] = pw[f, c]


def fft_tables(n: int, first_bin: int, n_bins: int) -> tuple[np.ndarray, ...]:
    """The tables :func:`welch_periodograms` takes after ``out`` for segments of ``n`` samples (a power of two,
    at least 4) and the bins ``first_bin .. first_bin + n_bins - 1``: twiddles, bit reversal, untangling."""
    m = n // 2
    j = np.arange(max(1, m // 2))
    bits = m.bit_length() - 1
    rev = np.array([int(format(i, f"0{bits}b")[::-1], 2) if bits else 0 for i in range(m)], np.int64)
    k = first_bin + np.arange(n_bins)
    return (
        np.cos(2.0 * np.pi * j / m),
        -np.sin(2.0 * np.pi * j / m),
        rev,
        np.cos(2.0 * np.pi * k / n),
        -np.sin(2.0 * np.pi * k / n),
    )


@numba.njit(numba.void(numba.float64[:, :, :, ::1], _F8_3D, _F8_2D, _F8_3D), cache=True, nogil=True, boundscheck=False)
def nlms_weights(gram, cross, coef, w):  # pragma: no cover - compiled
    """The ``nlms`` weight recursion over consecutive segments: from ``w[0]`` ``(C, H)``, for segment ``k``
    ``w[k + 1] = w[k] + coef (cross - gram w[k])`` per channel, written as numpy does it (the affine map
    ``[[I - coef gram, coef cross], [0, 1]]`` applied to ``[w; 1]``), with ``gram`` ``(C, P, H, H)``, ``cross``
    ``(C, P, H)``, ``coef`` ``(C, P)`` and ``w`` ``(P + 1, C, H)``. The only kernel that is not bitwise numpy:
    numpy's matmul goes through BLAS, whose summation order (and fused multiply-adds) differ in the last bit."""
    n_ch, n_p, hist = cross.shape
    for k in range(n_p):
        for c in range(n_ch):
            a = coef[c, k]
            for i in range(hist):
                acc = 0.0
                for j in range(hist):
                    acc += ((1.0 if i == j else 0.0) - gram[c, k, i, j] * a) * w[k, c, j]
                w[k + 1, c, i] = acc + cross[c, k, i] * a


def warm_up() -> None:
    """Call every kernel once on tiny inputs: numba's start-up and the loading of the compiled code happen
    here, not in the first batch."""
    sos = np.array([[1.0, 0.0, 0.0, 1.0, 0.0, 0.0]])
    sosfilt_channels_first(sos, np.zeros((1, 2)), np.zeros((1, 1, 2)))
    largest_jumps(np.zeros((1, 2)), np.zeros(2))
    i1 = np.zeros(1, np.int64)
    advance_lags(np.zeros((2, 1)), i1, np.ones(1), np.zeros(2, np.int64), i1, np.zeros((1, 1)), np.zeros((1, 1, 1)))
    median_frequencies(np.ones(2), np.ones((2, 1)), np.ones(1), np.zeros(1))
    power_spectrum(np.zeros((1, 1, 2), np.complex128), 1, np.zeros((1, 1, 1)))
    starts, four = np.zeros(1, np.int64), np.ones(4)
    welch_periodograms(np.zeros((1, 4)), starts, four, 1, np.zeros((1, 1, 1)), *fft_tables(4, 1, 1))
    weigh_ring_means(np.ones((1, 1, 1)), np.ones(1, np.int64), np.ones(1, np.int64), np.ones((1, 1, 1)))
    nlms_weights(np.zeros((1, 1, 1, 1)), np.zeros((1, 1, 1)), np.zeros((1, 1)), np.zeros((2, 1, 1)))
    window, out = np.zeros((1, 2, 1)), np.zeros((2, 1, 1))
    mwave_measures(window, np.ones((2, 1)), np.zeros((1, 1)), out, np.zeros((1, 1), np.int64))
    one, zero = np.ones(1, np.int64), np.zeros((1, 1), np.int64)
    prediction_error(np.zeros((1, 2)), np.zeros((1, 2)), one, one, zero, one, np.zeros((1, 1, 1)), np.ones((1, 1)))
