"""Numbers to text in bulk, byte for byte as Python's ``%`` formatting, without a Python call per number.

estimates.csv holds 14 numbers per channel per interval (a 64-channel replay of one minute at 30 Hz:
1.6 million); ``"%.6g" % x`` costs about 0.2 us each, as much as the estimation of them. Here whole
columns are formatted with numpy. A *field* is a ``(w, n)`` uint8 array: column ``i`` holds the ASCII
bytes of row ``i``'s text, spread over the ``w`` slots with the filler byte 0 in between;
:func:`join_fields` lays the fields of each row side by side and one boolean mask removes the filler.
Slots that no number of a block needs (a sign, a decimal point at some place, an exponent) are left out,
so typical fields are narrow.

The significant digits are ``rint(|x| * 10**k)``, ties to even as Python. Where ``10**|k|`` is exact
(``|k| <= 22``) the product or quotient is rounded once and cannot cross the half-integer next to the
true value; only a result of exactly ``n + 1/2`` is in doubt, and an integer test tells a true tie (kept)
from a value within half an ulp of one (left to Python). Where ``10**|k|`` is not exact, scaled values
within ``1e-6`` of a tie are left to Python, and so are exponents beyond +-290. The result is always that
of ``%`` (correctly rounded, ties to even). Precisions above :data:`MAX_DIGITS` significant digits are
formatted by Python altogether.

Non-finite numbers (NaN, inf) give an empty field, as estimates.csv writes them.

:func:`significands` gives the rounding alone (digits, exponents, the numbers left to Python), for a writer
that lays out the text itself (:mod:`closedloop.recording.csvkernel`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["MAX_DIGITS", "constant_field", "format_e", "format_g", "join_fields", "significands", "text_field"]

#: Most significant digits formatted with numpy (beyond, a few units in the last place reach 1e-6).
MAX_DIGITS = 8

_ZERO, _DOT, _MINUS, _PLUS, _E = (np.uint8(ord(c)) for c in "0.-+e")
_TIE_TOLERANCE = 1e-6  # |scaled - (n + 0.5)| below this: too close to call, Python formats it
_MAX_EXPONENT = 290  # beyond: 10**k may over- or underflow, Python formats it
_EXACT_POW10 = 22  # 10**k is exact in float64 up to here
_K_MAX = _MAX_EXPONENT + MAX_DIGITS + 2
_MUL = np.concatenate((np.ones(_K_MAX), 10.0 ** np.arange(0, _K_MAX + 1)))  # at k + _K_MAX: 10**k for k >= 0
_DIV = np.concatenate((10.0 ** np.arange(_K_MAX, 0, -1), np.ones(_K_MAX + 1)))  # 10**-k for k < 0
_POW10 = _MUL[_K_MAX : _K_MAX + _EXACT_POW10 + 1]  # 10**k, exact, for 0 <= k <= 22
_DIGITS3 = np.array([[ord(c) for c in f"{i:03d}"] for i in range(1000)], dtype=np.uint8).T  # (3, 1000)
_TRAILING3 = np.array([3 - len(f"{i:03d}".rstrip("0")) for i in range(1000)], dtype=np.int64)  # zeros ending i


def _significant(a: np.ndarray, nd: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Digits of finite ``a > 0`` rounded to ``nd`` significant ones.

    Returns the integer ``s`` (``10**(nd-1) <= s < 10**nd``, as float64), the decimal exponent ``e``
    with ``a ~= s * 10**(e - nd + 1)``, and a mask of the numbers whose rounding is not certain here."""
    with np.errstate(over="ignore", invalid="ignore"):  # numbers beyond 1e+-290 are left to Python
        return _significant_digits(a, nd)


def _significant_digits(a: np.ndarray, nd: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lg = np.log10(a)
    e = np.floor(lg, out=lg).astype(np.int64)
    if a.size and nd - 1 - _EXACT_POW10 <= e.min() and e.max() <= nd - 1:
        # the usual case (all |x| from 10**(nd-23) to below 10**nd): 0 <= k <= 22, one exact multiplication
        scaled = a * _POW10.take(nd - 1 - e)
        top = scaled.max()
        if scaled.min() >= 10.0 ** (nd - 1) and top < 10.0**nd:  # else log10 was one off somewhere
            return _rounded_once(a, scaled, e, nd, top)
    return _significant_digits_general(a, e, nd)


def _rounded_once(
    a: np.ndarray, scaled: np.ndarray, e: np.ndarray, nd: int, top: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_significant_digits_general` where all ``0 <= k <= 22`` and ``10**(nd-1) <= scaled <= top <
    10**nd``: every number rounded once, only exact half-integers in doubt, no exponent beyond the range."""
    s = np.rint(scaled)  # ties to even, as Python
    unsure = np.zeros(a.size, dtype=bool)
    doubt = scaled - np.floor(scaled) == 0.5
    if doubt.any():
        unsure[doubt] = ~_exact_tie(a[doubt], (nd - 1 - e)[doubt])
    if top >= 10.0**nd - 0.5:  # else nothing rounds up to 10**nd
        carry = s >= 10.0**nd  # 9999999.6 -> 10000000: one digit more
        s[carry] = 10.0 ** (nd - 1)
        e = e + carry
    if unsure.any():
        s[unsure] = 10.0 ** (nd - 1)
    return s, e, unsure


def _significant_digits_general(a: np.ndarray, e: np.ndarray, nd: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    unsure = np.abs(e) > _MAX_EXPONENT
    if unsure.any():
        e[unsure] = 0
    scaled = _scale(a, nd - 1 - e)
    # log10 may be one off next to a power of ten
    low, high = scaled < 10.0 ** (nd - 1), scaled >= 10.0**nd
    if low.any() or high.any():
        e += high.astype(np.int64) - low
        scaled = _scale(a, nd - 1 - e)
    s = np.rint(scaled)  # ties to even, as Python
    k = nd - 1 - e
    once = np.abs(k) <= _EXACT_POW10  # one rounding: it cannot cross the half-integer next to the value
    half = scaled - np.floor(scaled) == 0.5
    # rounded once, only a result of exactly n + 1/2 is in doubt: a true tie (exact, e.g. 9.765625 ms, a
    # sample period) or a value within half an ulp of one; rounded twice, anything too close to call
    doubt = once & half
    if doubt.any():
        unsure[doubt] |= ~_exact_tie(a[doubt], k[doubt])
    unsure |= ~once & (np.abs(scaled - np.floor(scaled) - 0.5) < _TIE_TOLERANCE)
    carry = s >= 10.0**nd  # 9999999.6 -> 10000000: one digit more
    if carry.any():
        s[carry] = 10.0 ** (nd - 1)
        e += carry
    if unsure.any():
        s[unsure] = 10.0 ** (nd - 1)
    return s, e, unsure


def _exact_tie(a: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Whether ``a * 10**k`` (``|k| <= 22``, ``a`` normal) is exactly an integer plus one half.

    With ``a = m * 2**b`` (``m`` a 53-bit integer) and ``t`` the power of 2 in ``m``: for ``k >= 0`` the
    value is ``odd * 2**(t + k + b)``, a half-integer when ``t + k + b == -1``; for ``k < 0`` it is
    ``(m / 5**-k) * 2**(b + k)``, a half-integer when ``5**-k`` divides ``m`` and ``t + b + k == -1``."""
    mantissa, b = np.frexp(a)
    m = (mantissa * 2.0**53).astype(np.int64)
    b = b.astype(np.int64) - 53
    t = np.frexp((m & -m).astype(np.float64))[1].astype(np.int64) - 1
    divides = np.where(k < 0, m % (5 ** np.clip(-k, 0, _EXACT_POW10)) == 0, True)
    return divides & (t + b + k == -1)


def _scale(a: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``a * 10**k`` rounded once where ``10**|k|`` is exact (``|k| <= 22``): multiply or divide."""
    i = k + _K_MAX
    return a * _MUL[i] / _DIV[i]


def _digits(s: np.ndarray, nd: int) -> tuple[np.ndarray, np.ndarray]:
    """ASCII digits of the integers ``0 <= s < 10**nd`` (float64), ``(nd, n)`` most significant first,
    and how many of them trail a non-zero one as zeros (``nd - 1`` for 0)."""
    groups = -(-nd // 3)
    out = np.empty((3 * groups, s.size), dtype=np.uint8)
    zeros = np.zeros(s.size, dtype=np.int64)
    alive = np.ones(s.size, dtype=bool)  # every group so far (from the right) is 000
    rest = s
    for g in range(groups - 1, -1, -1):
        high = np.floor(rest / 1000.0)
        group = (rest - 1000.0 * high).astype(np.intp)
        for d in range(3):
            out[3 * g + d] = _DIGITS3[d].take(group)
        zeros += _TRAILING3.take(group) * alive
        alive &= group == 0
        rest = high
    return out[3 * groups - nd :], np.minimum(zeros, nd - 1)


def _exponent_rows(e: np.ndarray, show: np.ndarray) -> list[np.ndarray]:
    """Slots of ``e+XX`` (three digits when ``|e| >= 100``) where ``show``, else filler."""
    a = np.where(show, np.abs(e), 0)
    a3 = np.minimum(a, 999)
    digits = [_DIGITS3[d].take(a3) * show for d in range(3)]
    rows = [_E * show, np.where(e < 0, _MINUS, _PLUS) * show]
    if (a >= 100).any():
        rows.append(digits[0] * (a >= 100))
    return [*rows, digits[1], digits[2]]


def _field(rows: list[np.ndarray], x: np.ndarray, where: np.ndarray | None, unsure: np.ndarray, fmt: str) -> np.ndarray:
    """Stack slot rows into a field for all of ``x``: the rows cover ``x[where]`` (None: all of it), the
    other numbers (non-finite) stay empty; numbers flagged ``unsure`` are formatted by Python."""
    sub = np.stack(rows)
    if where is None:
        out = sub
    else:
        out = np.zeros((sub.shape[0], x.size), dtype=np.uint8)
        out[:, where] = sub
    if unsure.any():
        at = np.flatnonzero(unsure) if where is None else where[unsure]
        texts = [(fmt % float(x[i])).encode("ascii") for i in at]
        width = max(len(b) for b in texts)
        if width > out.shape[0]:
            out = np.concatenate((out, np.zeros((width - out.shape[0], x.size), dtype=np.uint8)))
        for i, b in zip(at, texts, strict=True):
            out[:, i] = 0
            out[: len(b), i] = np.frombuffer(b, dtype=np.uint8)
    return out


def _prepare(x: np.ndarray, nd: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray, np.ndarray]:
    """The finite numbers of ``x`` (their indices, or None for all), and their digits and exponents."""
    finite = np.isfinite(x)
    where = None if finite.all() else np.flatnonzero(finite)
    v = x if where is None else x[where]
    a = np.abs(v)
    nonzero = a > 0
    if nonzero.all():
        s, e, unsure = _significant(a, nd)
    else:  # zero: digits 0, exponent 0
        s, e, unsure = _significant(np.where(nonzero, a, 1.0), nd)
        s *= nonzero
        e *= nonzero
        unsure &= nonzero
    return v, where, s, e, unsure


def format_g(x: np.ndarray, precision: int = 6) -> np.ndarray:
    """``"%.{precision}g" % v`` of every ``v`` in ``x`` (flattened) as a ``(w, n)`` uint8 field (an empty
    field for NaN and inf)."""
    p = max(int(precision), 1)
    x = np.asarray(x, dtype=np.float64).ravel()
    if p > MAX_DIGITS or x.size == 0:
        return _python_field(x, f"%.{p}g")
    v, where, s, e, unsure = _prepare(x, p)
    digits, zeros = _digits(s, p)
    nk = p - zeros  # significant digits left once trailing zeros are dropped (at least one)
    sci = (e < -4) | (e >= p)
    small = ~sci & (e < 0)  # 0.000ddd
    whole = ~sci & (e >= 0)  # ddd.ddd
    keep = np.where(whole, np.maximum(nk, e + 1), nk)
    rows = []
    neg = np.signbit(v)
    if neg.any():
        rows.append(_MINUS * neg)
    if small.any():
        rows += [_ZERO * small, _DOT * small]
        lead = np.where(small, -e - 1, 0)
        rows += [_ZERO * (lead > z) for z in range(int(lead.max()))]
    for j in range(p):
        rows.append(digits[j] if j == 0 else digits[j] * (keep > j))
        point = (sci & (nk > 1)) | (whole & (e == 0) & (nk > 1)) if j == 0 else whole & (e == j) & (nk > j + 1)
        if point.any():
            rows.append(_DOT * point)
    if sci.any():
        rows += _exponent_rows(e, sci)
    return _field(rows, x, where, unsure, f"%.{p}g")


def format_e(x: np.ndarray, precision: int = 6) -> np.ndarray:
    """``"%.{precision}e" % v`` of every ``v`` in ``x`` (flattened) as a ``(w, n)`` uint8 field (an empty
    field for NaN and inf)."""
    p = max(int(precision), 0)
    x = np.asarray(x, dtype=np.float64).ravel()
    if p + 1 > MAX_DIGITS or x.size == 0:
        return _python_field(x, f"%.{p}e")
    v, where, s, e, unsure = _prepare(x, p + 1)
    digits, _ = _digits(s, p + 1)
    rows = []
    neg = np.signbit(v)
    if neg.any():
        rows.append(_MINUS * neg)
    rows.append(digits[0])
    if p > 0:
        rows.append(np.full(v.size, _DOT))
    rows += list(digits[1:])
    rows += _exponent_rows(e, np.ones(v.size, dtype=bool))  # two exponent digits at least, as Python's
    return _field(rows, x, where, unsure, f"%.{p}e")


def significands(x: np.ndarray, digits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``|x|`` rounded to ``digits`` significant digits as ``%`` rounds them, for a writer that lays out the text
    itself (:mod:`closedloop.recording.csvkernel`).

    Parameters
    ----------
    x:
        Numbers, any shape.
    digits:
        Significant digits, 1 to :data:`MAX_DIGITS` (``%.6g``: 6, ``%.6e``: 7).

    Returns
    -------
    s, e, unsure:
        Arrays in the shape of ``x``: the digits as an integer ``10**(digits-1) <= s < 10**digits`` (float64),
        the decimal exponent (``|x| ~= s * 10**(e - digits + 1)``, int64), and where the rounding is not certain
        here (the numbers to format with Python). For zeros, NaN and inf, ``s`` and ``e`` mean nothing and
        ``unsure`` is False.
    """
    if not 1 <= digits <= MAX_DIGITS:
        raise ValueError(f"digits must be 1 to {MAX_DIGITS}, not {digits}")
    x = np.asarray(x, dtype=np.float64)
    a = np.abs(x)
    usual = (a > 0) & (a < np.inf)  # not zero, NaN or inf
    every = bool(usual.all())
    if not every:
        a = np.where(usual, a, 1.0)
    s, e, unsure = _significant(a.reshape(-1), digits)
    if not every:
        unsure &= usual.reshape(-1)
    return s.reshape(x.shape), e.reshape(x.shape), unsure.reshape(x.shape)


def _python_field(x: np.ndarray, fmt: str) -> np.ndarray:
    return text_field(["" if not np.isfinite(v) else fmt % v for v in x.tolist()])


def text_field(texts: Sequence[str]) -> np.ndarray:
    """UTF-8 bytes of ``texts`` as a ``(w, n)`` uint8 field (a NUL in a text would be dropped)."""
    encoded = [t.encode("utf-8") for t in texts]
    width = max((len(b) for b in encoded), default=0)
    out = np.zeros((max(width, 1), len(encoded)), dtype=np.uint8)
    for i, b in enumerate(encoded):
        out[: len(b), i] = np.frombuffer(b, dtype=np.uint8)
    return out


def constant_field(text: str, n: int) -> np.ndarray:
    """``text`` (a separator, a line end) in each of ``n`` rows: a ``(w, n)`` uint8 field."""
    return np.repeat(np.frombuffer(text.encode("utf-8"), dtype=np.uint8)[:, None], n, axis=1)


def join_fields(fields: Sequence[np.ndarray]) -> bytes:
    """Lay fields (each ``(w_i, n)`` uint8, the same ``n``) side by side, row by row, and drop the filler:
    the rows' bytes one after the other (separators and line ends are fields of their own)."""
    table = np.ascontiguousarray(np.concatenate(fields, axis=0).T).ravel()  # row by row
    return np.compress(table != 0, table).tobytes()
