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
    "nlms_steps",
    "nlms_weights",
    "plan_segments",
    "prediction_error",
    "sosfilt_channels_first",
    "warm_up",
    "weigh_ring_means",
    "welch_periodograms",
    "window_products",
    "window_products_exact",
]

_F8_2D = numba.float64[:, ::1]
_F8_3D = numba.float64[:, :, ::1]
_I8_1D = numba.int64[::1]
_F8_1D = numba.float64[::1]
_I8_2D = numba.int64[:, ::1]

#: Whether numpy's einsum sums the products of two windows as :func:`window_products` does (numpy's SSE2 loop,
#: see :func:`_window_dot`): checked by :func:`warm_up` on this machine. A numpy that sums in another order (built
#: for other SIMD instructions) leaves it False, and the estimator forms the products (and the prediction errors)
#: of its batches with numpy.
window_products_exact = False

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
    numba.void(_F8_2D, _F8_2D, _I8_1D, numba.int64, _I8_1D, _I8_1D, numba.int64, _I8_1D, _F8_3D, _F8_2D),
    cache=True,
    nogil=True,
    boundscheck=False,
)
def prediction_error(y, old, begin, n_old, rows, n_past, lo, hi, w, gain):  # pragma: no cover - compiled
    """The normalised prediction errors of pulse segments, in place in the ``(C, N)`` signal ``y``.

    Segment ``k`` (the ``n_old`` kept from earlier batches, then the ``S`` of this one) starts at sample
    ``begin[k]`` of ``old`` ``(C, M)`` (``k < n_old``) or of ``y`` (as :func:`plan_segments` gives it). Predicted
    segment ``p`` is the batch's segment ``s = rows[p]`` (increasing), ``k = n_old + s``; for every sample ``t``
    of ``[lo, hi[s])`` after its pulse, ``y[c, begin[k] + t] - x_j[c, t] * w[c, p, j]`` is subtracted lag by
    lag (``j < n_past[s]``, ``x_j`` the samples of segment ``k - 1 - j``), then divided by ``gain[p, c]``
    (``w`` ``(P, H, C)``, ``gain`` ``(P, C)``: channels last, as :func:`nlms_steps` gives them): what
    :meth:`~closedloop.estimation.volitional.VolitionalEstimator.segments` computes with numpy, in the same
    order. The segments are done from the last to the first, so that the past segments in ``y`` still hold
    their samples from before the call (as a copy of them would)."""
    n_ch = y.shape[0]
    for c in range(n_ch):
        row = y[c]
        before = old[c]
        for p in range(rows.shape[0] - 1, -1, -1):
            s = rows[p]
            k, m = n_old + s, n_past[s]
            n = hi[s] - lo
            if n <= 0:
                continue
            a = begin[k] + lo
            out = row[a : a + n]
            g = gain[p, c]
            if m == 1:  # one pass for the usual one or two lags
                s0 = k - 1
                x0 = (before if s0 < n_old else row)[begin[s0] + lo : begin[s0] + lo + n]
                w0 = w[p, 0, c]
                for t in range(n):
                    out[t] = (out[t] - x0[t] * w0) / g
            elif m == 2:
                s0, s1 = k - 1, k - 2
                x0 = (before if s0 < n_old else row)[begin[s0] + lo : begin[s0] + lo + n]
                x1 = (before if s1 < n_old else row)[begin[s1] + lo : begin[s1] + lo + n]
                w0, w1 = w[p, 0, c], w[p, 1, c]
                for t in range(n):
                    out[t] = ((out[t] - x0[t] * w0) - x1[t] * w1) / g
            else:
                for j in range(m):
                    sj = k - 1 - j
                    xj = (before if sj < n_old else row)[begin[sj] + lo : begin[sj] + lo + n]
                    wj = w[p, j, c]
                    for t in range(n):
                        out[t] -= xj[t] * wj
                for t in range(n):
                    out[t] /= g


@numba.njit(
    numba.void(
        _I8_1D,
        _I8_1D,
        _I8_1D,
        _I8_1D,
        _I8_1D,
        numba.int64,
        numba.int64,
        numba.int64,
        numba.int64,
        _I8_1D,
        _I8_1D,
        _I8_2D,
        _I8_1D,
        _I8_1D,
        _I8_1D,
    ),
    cache=True,
    nogil=True,
    boundscheck=False,
)
def plan_segments(
    past_len, past_pos, starts, ends, positions, n_max, b0, min_n, post_n, n_past, n, lags, lo, hi, begin
):  # pragma: no cover - compiled
    """What each of ``S`` consecutive pulse segments is predicted from, as
    :meth:`~closedloop.estimation.volitional.VolitionalEstimator.segments` plans it with numpy (integers only).

    Segment ``s`` is ``[starts[s], ends[s])`` of the batch (its pulse at stream sample ``positions[s]``), after
    the ``K`` past segments kept (``past_len``, ``past_pos``: their lengths and pulses, the oldest first). Into
    ``n_past[s]`` how many of the ``min(n_max, K + s)`` segments before it it is predicted from (0: too few
    samples in common, at least ``b0 + min_n``, or ``n_max`` 0: the ``post`` window), ``n[s]`` the samples it
    has in common with them, ``lags[s, j]`` ``(S, H)`` the distance to past segment ``j`` (most recent first;
    0 beyond ``n_past[s]``), ``[lo[s], hi[s])`` its volitional range in the batch (``[starts + b0, starts + n)``,
    or ``[starts + post_n, ends)`` cut to the segment), ``begin`` ``(K + S,)`` where each segment starts (the
    kept ones side by side from 0, then ``starts``)."""
    n_old = past_len.shape[0]
    at = 0
    for k in range(n_old):
        begin[k] = at
        at += past_len[k]
    for s in range(starts.shape[0]):
        begin[n_old + s] = starts[s]
    for s in range(starts.shape[0]):
        k = n_old + s
        m = min(n_max, k)
        common = ends[s] - starts[s]
        for j in range(lags.shape[1]):
            lags[s, j] = 0
        for j in range(m):
            r = k - 1 - j
            if r < n_old:
                common = min(common, past_len[r])
                lags[s, j] = positions[s] - past_pos[r]
            else:
                common = min(common, ends[r - n_old] - starts[r - n_old])
                lags[s, j] = positions[s] - positions[r - n_old]
        n[s] = common
        if m > 0 and common - b0 >= min_n:
            n_past[s] = m
            lo[s] = starts[s] + b0
            hi[s] = starts[s] + common
        else:
            n_past[s] = 0
            for j in range(lags.shape[1]):
                lags[s, j] = 0
            lo[s] = min(starts[s] + post_n, ends[s])
            hi[s] = ends[s]


@numba.njit(nogil=True, boundscheck=False)
def _window_tile(src, at, n, tile):  # pragma: no cover - compiled
    """``tile[t, c] = src[c, at + t]`` for ``t < n``: a window of every channel, samples first (read along the
    rows: down a column, rows 2^k samples long would all fall in the same cache set)."""
    for c in range(src.shape[0]):
        row = src[c, at : at + n]
        for t in range(n):
            tile[t, c] = row[t]


@numba.njit(nogil=True, boundscheck=False)
def _window_dot(a, b, n, acc, out):  # pragma: no cover - compiled
    """``out[c] = sum over t < n of a[t, c] * b[t, c]`` for ``(W, C)`` windows, summed as numpy's einsum sums a
    contiguous ``"l,l->"`` (its SSE loop: two lanes, even and odd samples; eight samples a step, each lane adding
    the products of its four from the last to the first onto its sum; then pairs, the second lane's missing past
    the end; then the two lanes added, then that added to 0), so the same numbers. ``acc`` ``(2, C)``: scratch."""
    n_ch = a.shape[1]
    for c in range(n_ch):
        acc[0, c] = 0.0
        acc[1, c] = 0.0
    i = 0
    while n - i >= 8:
        for c in range(n_ch):
            acc[0, c] = a[i, c] * b[i, c] + (
                a[i + 2, c] * b[i + 2, c] + (a[i + 4, c] * b[i + 4, c] + (a[i + 6, c] * b[i + 6, c] + acc[0, c]))
            )
            acc[1, c] = a[i + 1, c] * b[i + 1, c] + (
                a[i + 3, c] * b[i + 3, c] + (a[i + 5, c] * b[i + 5, c] + (a[i + 7, c] * b[i + 7, c] + acc[1, c]))
            )
        i += 8
    while n - i >= 2:
        for c in range(n_ch):
            acc[0, c] = a[i, c] * b[i, c] + acc[0, c]
            acc[1, c] = a[i + 1, c] * b[i + 1, c] + acc[1, c]
        i += 2
    if i < n:
        for c in range(n_ch):
            acc[0, c] = a[i, c] * b[i, c] + acc[0, c]
    for c in range(n_ch):
        out[c] = 0.0 + (acc[0, c] + acc[1, c])


@numba.njit(
    numba.void(
        _F8_2D,
        _F8_2D,
        _I8_1D,
        numba.int64,
        _I8_1D,
        _I8_1D,
        _I8_1D,
        numba.int64,
        numba.int64,
        numba.int64,
        numba.float64[:, :, :, ::1],
        _F8_3D,
    ),
    cache=True,
    nogil=True,
    boundscheck=False,
)
def window_products(y, old, begin, n_old, rows, n_past, n, fit0, fit1, b0, gram, cross):  # pragma: no cover - compiled
    """The products over their fit windows of pulse segments and their past ones, for the prediction weights.

    Segments are numbered and found as in :func:`prediction_error` (``begin``, ``n_old``: the first ``n_old`` in
    ``old``, the others in ``y``, both ``(C, *)``; predicted segment ``p`` is the batch's ``s = rows[p]``,
    ``k = n_old + s``). Its fit window (samples after each segment's pulse) is ``[fit0, fit1)`` cut to the
    ``n[s]`` samples it has in common with its ``m = n_past[s]`` past segments, or ``[b0, n[s])`` where fewer
    than 2 of it are left. With ``x_j`` the window of segment ``k - 1 - j`` and ``x`` its own:
    ``gram[p, i, j, c] = <x_i, x_j>`` ``(P, H, H, C)`` and ``cross[p, i, c] = <x_i, x>`` ``(P, H, C)``, 0 for
    ``i`` or ``j >= m`` (channels last: ``_products``' arrays transposed); each sum as numpy's einsum forms it
    (see :func:`_window_dot`), so the numbers of
    :func:`~closedloop.estimation.volitional._products` over the windows of ``VolitionalEstimator._fit_windows``.
    The windows are turned samples-first (channels side by side) and each product of two segments' windows is
    formed once (a segment's ``<x_i, x_j>`` is its predecessor's ``<x_{i-1}, x_{j-1}>`` when their windows
    agree), ``H + 1`` per segment."""
    n_ch = y.shape[0]
    hist = gram.shape[1]
    slots = hist + 1  # segments k - hist .. k: slot r % slots
    n_p = rows.shape[0]
    w0s, w1s = np.empty(n_p, np.int64), np.empty(n_p, np.int64)
    width = 0
    for p in range(n_p):
        common = n[rows[p]]
        w0, w1 = min(fit0, common), min(fit1, common)
        if w1 - w0 < 2:
            w0, w1 = b0, common
        w0s[p], w1s[p] = w0, w1
        width = max(width, w1 - w0)
    tiles = np.empty((slots, max(width, 1), n_ch))
    tile_of = np.full((slots, 3), -1, np.int64)  # (segment, window start, window end) each tile holds
    lag = np.empty((slots, slots, n_ch))  # lag[r % slots, d] = <window of r, window of r - d>
    lag_of = np.full((slots, 3), -1, np.int64)
    have = np.zeros((slots, slots), np.bool_)
    acc = np.empty((2, n_ch))
    for p in range(n_p):
        k, m, w0, w1 = n_old + rows[p], n_past[rows[p]], w0s[p], w1s[p]
        for r in range(k - m, k + 1):
            s = r % slots
            if tile_of[s, 0] != r or tile_of[s, 1] != w0 or tile_of[s, 2] != w1:
                _window_tile(old if r < n_old else y, begin[r] + w0, w1 - w0, tiles[s])
                tile_of[s, 0], tile_of[s, 1], tile_of[s, 2] = r, w0, w1
        for i in range(hist):
            for j in range(i, hist + 1):  # j = hist: cross[i], the product with the current segment
                if i >= m or (j < hist and j >= m):
                    if j < hist:
                        gram[p, i, j, :] = 0.0
                        gram[p, j, i, :] = 0.0
                    else:
                        cross[p, i, :] = 0.0
                    continue
                r, d = (k - 1 - i, j - i) if j < hist else (k, i + 1)
                s = r % slots
                if lag_of[s, 0] != r or lag_of[s, 1] != w0 or lag_of[s, 2] != w1:
                    lag_of[s, 0], lag_of[s, 1], lag_of[s, 2] = r, w0, w1
                    have[s, :] = False
                if not have[s, d]:
                    _window_dot(tiles[s], tiles[(r - d) % slots], w1 - w0, acc, lag[s, d])
                    have[s, d] = True
                v = lag[s, d]
                if j < hist:
                    gram[p, i, j, :] = v
                    gram[p, j, i, :] = v
                else:
                    cross[p, i, :] = v


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
    side, with the window applied as the samples are loaded, so a batch's 64 channels take about two thirds of the time.
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


@numba.njit(
    numba.void(numba.float64[:, :, :, ::1], _F8_3D, _I8_1D, _I8_1D, numba.float64, _F8_2D, _F8_3D, _F8_2D, _F8_3D),
    cache=True,
    nogil=True,
    boundscheck=False,
)
def nlms_steps(gram, cross, rows, n_past, mu, state, w, gain, weights):  # pragma: no cover - compiled
    """The ``nlms`` weights of consecutive segments and their prediction errors' gains, from the products over
    their fit windows ``gram`` ``(P, H, H, C)`` and ``cross`` ``(P, H, C)`` (as :func:`window_products` gives them;
    segment ``p`` is the batch's ``rows[p]``, 0 beyond its ``n_past[rows[p]]`` past segments): for each segment,
    into ``w`` ``(P, H, C)`` the weights before it (``state`` ``(C, H)``, updated in place) times 1.0 for the past
    segments it has, 0.0 beyond, also into ``weights[rows[p]]`` ``(C, H)`` (the batch's weights by segment), into
    ``gain`` ``(P, C)`` ``sqrt(1 + |w|^2)``; then the step with ``coef = mu / trace(gram)`` (``mu`` where the
    trace is not positive) as :func:`nlms_weights` takes it. What
    :meth:`~closedloop.estimation.volitional.VolitionalEstimator._weights` (with :func:`nlms_weights`) and
    ``_sum_sq`` compute, in the same order (the trace summed from 0, the squares added lag by lag), each
    operation for all channels side by side."""
    n_p, hist, n_ch = cross.shape
    v = np.empty((hist, n_ch))  # the state, channels last
    for c in range(n_ch):
        for j in range(hist):
            v[j, c] = state[c, j]
    new = np.empty((hist, n_ch))
    coef = np.empty(n_ch)
    acc = np.empty(n_ch)
    for k in range(n_p):
        m = n_past[rows[k]]
        g, x, wk, gk = gram[k], cross[k], w[k], gain[k]
        coef[:] = 0.0  # the trace
        for j in range(hist):
            gjj = g[j, j]
            for c in range(n_ch):
                coef[c] += gjj[c]
        for c in range(n_ch):
            coef[c] = mu / (coef[c] if coef[c] > 0 else 1.0)
        for j in range(hist):
            on = 1.0 if j < m else 0.0
            wj, vj = wk[j], v[j]
            for c in range(n_ch):
                wj[c] = vj[c] * on
            if j == 0:
                for c in range(n_ch):
                    acc[c] = wj[c] * wj[c]
            else:
                for c in range(n_ch):
                    acc[c] += wj[c] * wj[c]
        for c in range(n_ch):
            gk[c] = np.sqrt(1.0 + acc[c])
        out = weights[rows[k]]
        for j in range(hist):
            for c in range(n_ch):
                out[c, j] = wk[j, c]
        for i in range(hist):
            acc[:] = 0.0
            for j in range(hist):
                d, gij, vj = 1.0 if i == j else 0.0, g[i, j], v[j]
                for c in range(n_ch):
                    acc[c] += (d - gij[c] * coef[c]) * vj[c]
            xi, ni = x[i], new[i]
            for c in range(n_ch):
                ni[c] = acc[c] + xi[c] * coef[c]
        v[:, :] = new
    for c in range(n_ch):
        for j in range(hist):
            state[c, j] = v[j, c]


def warm_up() -> None:
    """Call every kernel once on tiny inputs: numba's start-up and the loading of the compiled code happen
    here, not in the first batch; and set :data:`window_products_exact`."""
    global window_products_exact
    sos = np.array([[1.0, 0.0, 0.0, 1.0, 0.0, 0.0]])
    sosfilt_channels_first(sos, np.zeros((1, 2)), np.zeros((1, 1, 2)))
    largest_jumps(np.zeros((1, 2)), np.zeros(2))
    i1 = np.zeros(1, np.int64)
    advance_lags(np.zeros((2, 1)), i1, np.ones(1), np.zeros(2, np.int64), i1, np.zeros((1, 1)), np.zeros((1, 1, 1)))
    median_frequencies(np.ones(2), np.ones((2, 1)), np.ones(1), np.zeros(1))
    starts, four = np.zeros(1, np.int64), np.ones(4)
    welch_periodograms(np.zeros((1, 4)), starts, four, 1, np.zeros((1, 1, 1)), *fft_tables(4, 1, 1))
    weigh_ring_means(np.ones((1, 1, 1)), np.ones(1, np.int64), np.ones(1, np.int64), np.ones((1, 1, 1)))
    nlms_weights(np.zeros((1, 1, 1, 1)), np.zeros((1, 1, 1)), np.zeros((1, 1)), np.zeros((2, 1, 1)))
    w, one = np.zeros((1, 1, 1)), np.ones(1, np.int64)
    nlms_steps(np.zeros((1, 1, 1, 1)), w, 0 * one, one, 0.5, np.zeros((1, 1)), w, np.zeros((1, 1)), w)
    window, out = np.zeros((1, 2, 1)), np.zeros((2, 1, 1))
    mwave_measures(window, np.ones((2, 1)), np.zeros((1, 1)), out, np.zeros((1, 1), np.int64))
    e, lags = np.empty(1, np.int64), np.empty((1, 1), np.int64)
    begin = np.empty(2, np.int64)
    plan_segments(2 * one, 0 * one, 0 * one, 2 * one, 2 * one, 1, 0, 1, 0, one.copy(), one.copy(), lags, e, e, begin)
    y, old = np.zeros((1, 4)), np.zeros((1, 2))
    window_products(y, old, begin, 1, 0 * one, one, 2 * one, 0, 2, 0, np.zeros((1, 1, 1, 1)), w)
    prediction_error(y, old, begin, 1, 0 * one, one, 0, 2 * one, w, np.ones((1, 1)))
    window_products_exact = _sums_as_einsum()


def _sums_as_einsum() -> bool:
    """Whether :func:`window_products` gives numpy's einsum products for windows of 2 to 48 samples, of numbers
    of very different sizes (a sum in another order differs in the last bits)."""
    rng = np.random.default_rng(7)
    y = rng.standard_normal((4, 100)) * 10.0 ** rng.uniform(-6, 6, (4, 100))
    begin, one = np.array([0, 50], np.int64), np.ones(1, np.int64)
    gram, cross = np.empty((1, 1, 1, 4)), np.empty((1, 1, 4))
    for width in range(2, 49):
        window_products(
            y, y[:, :0].copy(), begin, 0, one, np.array([0, 1]), 50 + 0 * begin, 1, 1 + width, 0, gram, cross
        )
        a, b = y[:, 51 : 51 + width], y[:, 1 : 1 + width]
        if not (
            np.array_equal(cross[0, 0], np.einsum("...l,...l->...", b, a))
            and np.array_equal(gram[0, 0, 0], np.einsum("...l,...l->...", b, b))
        ):
            return False
    return True
