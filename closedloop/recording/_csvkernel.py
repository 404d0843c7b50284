"""The numba kernel behind :mod:`closedloop.recording.csvkernel` (import that module, not this one: importing
this one starts numba).

:func:`write_rows` lays out rows of estimates.csv byte by byte from digits and exponents that numpy rounded
(:func:`closedloop.recording.numtext.significands`); it rounds nothing itself. Compiled for the exact argument
types it is called with (explicit signature) and cached on disk, as the estimator's kernels.

Positions in the output are unsigned (``np.uint64``, and so every constant added to them): numba then leaves out
the negative-index wrap-around it otherwise adds to each byte written (about 40 % fewer instructions). Mixing
them with signed integers would make floats, which numba refuses as indices: such a slip cannot compile.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from closedloop.recording import numtext

__all__ = ["significands", "warm_up", "write_rows"]

_U8 = numba.uint8[::1]
_I8 = numba.int64[::1]
_F8_3D = numba.float64[:, :, ::1]
_I8_3D = numba.int64[:, :, ::1]
_B_3D = numba.boolean[:, :, ::1]
_U8_3D = numba.uint64[:, :, ::1]

_COMMA, _DOT, _MINUS, _PLUS, _ZERO, _E, _NL = (np.uint8(ord(c)) for c in ",.-+0e\n")
#: ASCII digits of 0-999, three per number ("007"), and how many zeros end each (3 for 0).
_DIGITS3 = np.array([[ord(c) for c in f"{i:03d}"] for i in range(1000)], dtype=np.uint8).ravel()
_TRAILING3 = np.array([3 - len(f"{i:03d}".rstrip("0")) for i in range(1000)], dtype=np.uint64)
_0, _1, _2, _3, _4, _5, _6, _7, _8 = (np.uint64(k) for k in range(9))
# numtext's rounding: 10**k at k + _K (to multiply by for k >= 0; _DIV: to divide by for k < 0), exact to 10**22
_K = numtext._K_MAX
_MUL, _DIV = numtext._MUL, numtext._DIV
_EXACT = numtext._EXACT_POW10
_POW5 = np.array([5**k for k in range(_EXACT + 1)], dtype=np.int64)
_MAX_E = numtext._MAX_EXPONENT
_TIE = numtext._TIE_TOLERANCE
_52, _EXP_MASK = np.uint64(52), np.uint64(0x7FF)
_100, _1000, _1M = np.uint64(100), np.uint64(1000), np.uint64(1000000)


@numba.njit(inline="always")
def _copy(out, p, src, a, b):  # pragma: no cover - compiled
    """``src[a:b]`` to ``out[p:]``; returns the end."""
    for q in range(a, b):
        out[p] = src[np.uint64(q)]
        p += _1
    return p


@numba.njit(inline="always")
def _exponent(out, p, e):  # pragma: no cover - compiled
    """``e+XX`` (three digits from 100 on), as Python writes an exponent."""
    out[p] = _E
    out[p + _1] = _MINUS if e < 0 else _PLUS
    a = _3 * np.uint64(-e if e < 0 else e)
    if a >= _3 * _100:
        out[p + _2] = _DIGITS3[a]
        p += _1
    out[p + _2] = _DIGITS3[a + _1]
    out[p + _3] = _DIGITS3[a + _2]
    return p + _4


@numba.njit(inline="always")
def _g6(out, p, s, e):  # pragma: no cover - compiled
    """``%.6g`` of ``s * 10**(e - 5)`` (``10**5 <= s < 10**6``) at ``out[p:]``; returns the end. The digits are
    written at fixed places and the end set past the last one kept (trailing zeros dropped, as %g does)."""
    hi = s // _1000
    lo = s - _1000 * hi
    h = _3 * hi
    k = _3 * lo
    d0, d1, d2 = _DIGITS3[h], _DIGITS3[h + _1], _DIGITS3[h + _2]
    d3, d4, d5 = _DIGITS3[k], _DIGITS3[k + _1], _DIGITS3[k + _2]
    kept = _6 - _TRAILING3[lo] - np.uint64(lo == _0) * _TRAILING3[hi]  # significant digits, trailing zeros dropped
    if 0 <= e < 6:  # ddd.ddd: the point after digit e
        ue = np.uint64(e)
        out[p] = d0
        out[p + _1 + np.uint64(e < 1)] = d1
        out[p + _2 + np.uint64(e < 2)] = d2
        out[p + _3 + np.uint64(e < 3)] = d3
        out[p + _4 + np.uint64(e < 4)] = d4
        out[p + _5 + np.uint64(e < 5)] = d5
        out[p + _1 + ue] = _DOT
        return p + (kept + _1 if kept > ue + _1 else ue + _1)
    if -4 <= e < 0:  # 0.000ddd
        out[p] = _ZERO
        out[p + _1] = _DOT
        out[p + _2] = _ZERO
        out[p + _3] = _ZERO
        out[p + _4] = _ZERO
        q = p + _1 + np.uint64(-e)
        out[q] = d0
        out[q + _1] = d1
        out[q + _2] = d2
        out[q + _3] = d3
        out[q + _4] = d4
        out[q + _5] = d5
        return q + kept
    out[p] = d0  # d.ddddde+XX
    out[p + _1] = _DOT
    out[p + _2] = d1
    out[p + _3] = d2
    out[p + _4] = d3
    out[p + _5] = d4
    out[p + _6] = d5
    return _exponent(out, p + (kept + _1 if kept > _1 else _1), e)


@numba.njit(inline="always")
def _e6(out, p, s, e):  # pragma: no cover - compiled
    """``%.6e`` of ``s * 10**(e - 6)`` (``10**6 <= s < 10**7``, or 0 with ``e`` 0) at ``out[p:]``."""
    d0 = s // _1M
    r = s - _1M * d0
    hi = r // _1000
    lo = r - _1000 * hi
    h = _3 * hi
    k = _3 * lo
    out[p] = _ZERO + np.uint8(d0)
    out[p + _1] = _DOT
    out[p + _2] = _DIGITS3[h]
    out[p + _3] = _DIGITS3[h + _1]
    out[p + _4] = _DIGITS3[h + _2]
    out[p + _5] = _DIGITS3[k]
    out[p + _6] = _DIGITS3[k + _1]
    out[p + _7] = _DIGITS3[k + _2]
    return _exponent(out, p + _8, e)


@numba.njit(inline="always")
def _exact_tie(a, k):  # pragma: no cover - compiled
    """Whether ``a * 10**k`` (``|k| <= 22``, ``a`` normal) is exactly an integer plus one half: numtext's
    ``_exact_tie`` for one number."""
    mantissa, b = math.frexp(a)
    m = np.int64(mantissa * 9007199254740992.0)  # * 2**53: the integer significand
    t = math.frexp(np.float64(m & -m))[1] - 1  # the power of 2 in it
    if k < 0 and m % _POW5[-k] != 0:
        return False
    return t + (b - 53) + k == -1


@numba.njit(inline="always")
def _scaled(a, k):  # pragma: no cover - compiled
    """``a * 10**k`` as numtext's ``_scale`` computes it (a product for k >= 0, a quotient below)."""
    return a * _MUL[_K + k] if k >= 0 else a / _DIV[_K + k]


@numba.njit(
    numba.void(_F8_3D, _U8_3D, numba.int64, numba.int64, numba.int64, _F8_3D, _I8_3D, _B_3D),
    cache=True,
    nogil=True,
    boundscheck=False,
    error_model="numpy",
)
def significands(x, bits, j0, j1, nd, s, e, unsure):
    """numtext's ``significands(x[:, j0:j1], nd)`` written to ``s``, ``e`` and ``unsure`` (``(n_iv, j1 - j0,
    n_ch)`` each): ``|x|`` rounded to ``nd`` significant digits (``10**(nd-1) <= s < 10**nd``, the decimal exponent
    ``e``), ties to even, and the numbers too close to call flagged; for zeros, NaN and inf ``s`` and ``e`` mean
    nothing. ``bits`` is ``x`` viewed as uint64. numtext's steps one number at a time, except the first guess of the
    exponent: from the binary exponent (in the bits) and a comparison with a power of ten instead of ``log10``
    (either guess may be one off next to a power of ten, which the range of the scaled number corrects: the digits
    are the same)."""
    n_iv, _, n_ch = x.shape
    lo = _MUL[_K + nd - 1]
    hi = _MUL[_K + nd]
    for i in range(n_iv):
        for j in range(j0, j1):
            q = j - j0
            for c in range(n_ch):
                a = abs(x[i, j, c])
                if not (0.0 < a < math.inf):
                    s[i, q, c] = lo
                    e[i, q, c] = 0
                    unsure[i, q, c] = False
                    continue
                b = np.int64((bits[i, j, c] >> _52) & _EXP_MASK) - 1023  # 2**b <= a < 2**(b + 1) (normal numbers)
                ee = (b * 78913) >> 18  # floor(b * log10(2)): 10**ee <= a, or one below (far below if subnormal)
                if -_K <= ee + 1 <= _K and a >= _MUL[_K + ee + 1] / _DIV[_K + ee + 1]:
                    ee += 1
                if ee > _MAX_E or ee < -_MAX_E:  # 10**k may over- or underflow: Python formats it
                    s[i, q, c] = lo
                    e[i, q, c] = 0
                    unsure[i, q, c] = True
                    continue
                k = nd - 1 - ee
                scaled = _scaled(a, k)
                if scaled < lo or scaled >= hi:  # one off next to a power of ten
                    ee += 1 if scaled >= hi else -1
                    k = nd - 1 - ee
                    scaled = _scaled(a, k)
                r = np.rint(scaled)  # ties to even, as Python
                frac = scaled - math.floor(scaled)
                if -_EXACT <= k <= _EXACT:  # rounded once: only an exact n + 1/2 is in doubt
                    u = frac == 0.5 and not _exact_tie(a, k)
                else:  # rounded twice: anything too close to call
                    u = abs(frac - 0.5) < _TIE
                if r >= hi:  # 9999999.6 -> 10000000: one digit more
                    r = lo
                    ee += 1
                s[i, q, c] = lo if u else r
                e[i, q, c] = ee
                unsure[i, q, c] = u


@numba.njit(
    numba.int64(_U8, numba.int64, _U8, _I8, _U8, _I8, _F8_3D, _F8_3D, _I8_3D, _B_3D, _F8_3D, _I8_3D, _B_3D, _I8),
    cache=True,
    nogil=True,
    boundscheck=False,
    error_model="numpy",
)
def write_rows(out, row_max, names, name_at, pieces, piece_at, x, sg, eg, ug, se, ee, ue, unsure_at):
    """Write the rows of ``n_iv`` intervals x ``n_ch`` channels to ``out``; returns the number of bytes, or -1
    if ``out`` might not hold the next row (``row_max`` bytes at most).

    Row ``(i, c)`` is piece ``i`` (the interval's head), name ``c``, piece ``n_iv + i`` (what follows the name,
    e.g. ``,12.5``), then ``,`` and a number for every column ``j`` of ``x[i, :, c]``: ``%.6g`` for the
    ``n_g = sg.shape[1]`` first, ``%.6e`` for the others, empty for NaN and inf; then a line end. The digits
    ``sg``/``se``, exponents ``eg``/``ee`` and flags ``ug``/``ue`` are numtext's ``significands`` of ``x[:, :n_g]``
    (6 digits) and ``x[:, n_g:]`` (7 digits); a flagged number is copied from the pieces: piece
    ``2 * n_iv + t`` for the ``t``-th flat index in ``unsure_at`` (``(i * n_g + j) * n_ch + c`` in the first
    columns, ``n_iv * n_g * n_ch + (i * n_e + j - n_g) * n_ch + c`` in the others), sign included."""
    n_iv, n_col, n_ch = x.shape
    n_g = sg.shape[1]
    n_e = n_col - n_g
    p = _0
    size = np.uint64(out.size)
    umax = np.uint64(row_max)
    for i in range(n_iv):
        for c in range(n_ch):
            if p + umax > size:
                return -1
            p = _copy(out, p, pieces, piece_at[i], piece_at[i + 1])
            p = _copy(out, p, names, name_at[c], name_at[c + 1])
            p = _copy(out, p, pieces, piece_at[n_iv + i], piece_at[n_iv + i + 1])
            for j in range(n_g):
                out[p] = _COMMA
                p += _1
                v = x[i, j, c]
                if not math.isfinite(v):
                    continue
                if ug[i, j, c]:
                    t = 2 * n_iv + np.searchsorted(unsure_at, (i * n_g + j) * n_ch + c)
                    p = _copy(out, p, pieces, piece_at[t], piece_at[t + 1])
                    continue
                if math.copysign(1.0, v) < 0.0:
                    out[p] = _MINUS
                    p += _1
                if v == 0.0:
                    out[p] = _ZERO
                    p += _1
                else:
                    p = _g6(out, p, np.uint64(sg[i, j, c]), eg[i, j, c])
            for j in range(n_e):
                out[p] = _COMMA
                p += _1
                v = x[i, n_g + j, c]
                if not math.isfinite(v):
                    continue
                if ue[i, j, c]:
                    t = 2 * n_iv + np.searchsorted(unsure_at, (n_iv * n_g + i * n_e + j) * n_ch + c)
                    p = _copy(out, p, pieces, piece_at[t], piece_at[t + 1])
                    continue
                if math.copysign(1.0, v) < 0.0:
                    out[p] = _MINUS
                    p += _1
                if v == 0.0:
                    p = _e6(out, p, _0, 0)
                else:
                    p = _e6(out, p, np.uint64(se[i, j, c]), ee[i, j, c])
            out[p] = _NL
            p += _1
    return np.int64(p)


def warm_up() -> None:
    """Call the kernel once on tiny inputs: numba's start-up and the loading of the compiled code happen here."""
    x = np.array([[[1.5], [-0.0], [np.nan]]])  # one interval, three columns (two %.6g, one %.6e), one channel
    s, e, u = np.empty((1, 2, 1)), np.empty((1, 2, 1), np.int64), np.empty((1, 2, 1), bool)
    se, ee, ue = np.empty((1, 1, 1)), np.empty((1, 1, 1), np.int64), np.empty((1, 1, 1), bool)
    significands(x, x.view(np.uint64), 0, 2, 6, s, e, u)
    significands(x, x.view(np.uint64), 2, 3, 7, se, ee, ue)
    text, at = np.zeros(1, np.uint8), np.zeros(3, np.int64)
    write_rows(np.empty(64, np.uint8), 64, text, at[:2], text, at, x, s, e, u, se, ee, ue, at[:0])
