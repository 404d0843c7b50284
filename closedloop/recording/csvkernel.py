"""estimates.csv rows laid out by a compiled kernel (numba, where it is there), byte for byte as ``%`` writes them.

:mod:`~closedloop.recording.numtext` formats whole columns with numpy, but putting the texts of each row side
by side then costs as much again: a transpose of the whole table and a compaction dropping the filler bytes.
Here a compiled loop rounds the numbers as :func:`~closedloop.recording.numtext.significands` does (digits and
exponents, correctly rounded, the cases it cannot decide flagged and formatted by Python; the same steps one
number at a time, without numpy's temporary arrays), and another writes every row's bytes where they go, in a
buffer reused from batch to batch.

Only a recorder that asks for it uses it (fast replays, where the estimator's kernels have started numba
anyway): :func:`load` starts numba (about a second, unless already started), compiles the first time on a
machine (about 2 s; cached beside this file as :mod:`closedloop.estimation.kernels` caches its own) and
otherwise loads the cached code (about 10 ms). Where :func:`closedloop.estimation.kernels.available` says no
(numba missing, ``CLOSEDLOOP_JIT=0``), or the kernel fails to load, the recorder uses the numpy path, which
writes the same bytes.
"""

from __future__ import annotations

import importlib
import threading
import warnings
from collections.abc import Sequence
from types import ModuleType

import numpy as np

from closedloop.estimation import kernels

__all__ = ["RowWriter", "load"]

_lock = threading.Lock()
_module: ModuleType | None = None
_tried = False

_G_MAX, _E_MAX = len("-1.23456e+100"), len("-1.234560e+100")  # the longest %.6g and %.6e of a float64


def load() -> ModuleType | None:
    """The compiled kernel (:mod:`closedloop.recording._csvkernel`), loaded and ready to call; None where
    :func:`closedloop.estimation.kernels.available` says no. Later calls return at once."""
    global _module, _tried
    with _lock:
        if not _tried:
            _tried = True
            if kernels.available():
                try:  # the numpy path writes the same bytes: any failure here only costs time
                    mod = importlib.import_module("closedloop.recording._csvkernel")
                    mod.warm_up()
                except Exception as exc:  # e.g. a numba that does not support this numpy, or fails to compile
                    warnings.warn(f"compiled CSV writer unavailable ({exc}); using numpy", RuntimeWarning, stacklevel=2)
                else:
                    _module = mod
        return _module


def _pieces(texts: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """``texts`` one after the other (uint8) and where each starts, with the end last (int64)."""
    data = np.frombuffer(bytearray(b"".join(texts)) or bytearray(1), dtype=np.uint8)
    at = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum([len(t) for t in texts], out=at[1:])
    return data, at


class RowWriter:
    """Writes rows of estimates.csv for a fixed set of channels with the compiled kernel.

    Parameters
    ----------
    kernel:
        What :func:`load` returned.
    names:
        Each channel's field as it goes between the head and the tail of a row (quoted where needed), UTF-8.
    """

    def __init__(self, kernel: ModuleType, names: Sequence[bytes]) -> None:
        self._kernel = kernel
        self._names, self._name_at = _pieces(names)
        self._name_max = max((len(n) for n in names), default=0)
        self._out = np.empty(0, dtype=np.uint8)

    def rows(self, heads: Sequence[bytes], tails: Sequence[bytes], x: np.ndarray, n_g: int) -> memoryview:
        """The rows of ``len(heads)`` intervals, one per channel: ``heads[i]``, the channel's name, ``tails[i]``,
        then ``,`` and the number for each column of ``x[i, :, c]`` (``(n_intervals, n_columns, n_channels)``
        float64): ``%.6g`` for the first ``n_g`` columns, ``%.6e`` for the others, an empty cell for NaN and
        inf; then a line end.

        Returns the bytes as a view of a buffer the next call overwrites."""
        x = np.ascontiguousarray(x, dtype=np.float64)
        n_iv, n_col, n_ch = x.shape
        if len(heads) != n_iv or len(tails) != n_iv or n_ch != self._name_at.size - 1:
            raise ValueError(f"{len(heads)} heads, {len(tails)} tails, {self._name_at.size - 1} names for {x.shape}")
        (sg, eg, ug), (se, ee, ue) = self._rounded(x, n_g)
        unsure_at = np.zeros(0, dtype=np.int64)
        texts = [*heads, *tails]
        if ug.any() or ue.any():  # to Python, rarely (ties within an ulp, exponents beyond 290)
            at_g, at_e = np.flatnonzero(ug), np.flatnonzero(ue)
            texts += [b"%.6g" % v for v in x[:, :n_g].reshape(-1)[at_g].tolist()]
            texts += [b"%.6e" % v for v in x[:, n_g:].reshape(-1)[at_e].tolist()]
            unsure_at = np.concatenate((at_g, ug.size + at_e))
        pieces, piece_at = _pieces(texts)
        widths = np.diff(piece_at[: 2 * n_iv + 1])
        row_max = int(widths[:n_iv].max(initial=0) + widths[n_iv:].max(initial=0)) + self._name_max
        row_max += n_g * (1 + _G_MAX) + (n_col - n_g) * (1 + _E_MAX) + 1
        if self._out.size < row_max * n_iv * n_ch:
            self._out = np.empty(row_max * n_iv * n_ch, dtype=np.uint8)
        n = self._kernel.write_rows(
            self._out, row_max, self._names, self._name_at, pieces, piece_at, x, sg, eg, ug, se, ee, ue, unsure_at
        )
        if n < 0:  # pragma: no cover - row_max is an upper bound
            raise RuntimeError("estimates.csv rows overran their buffer")
        return memoryview(self._out)[:n]

    def _rounded(self, x: np.ndarray, n_g: int) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
        """numtext's ``significands`` of ``x[:, :n_g]`` (6 digits) and ``x[:, n_g:]`` (7), by the compiled loop."""
        n_iv, n_col, n_ch = x.shape
        out = []
        bits = x.view(np.uint64)
        for j0, j1, digits in ((0, n_g, 6), (n_g, n_col, 7)):
            shape = (n_iv, j1 - j0, n_ch)
            s, e, u = np.empty(shape), np.empty(shape, np.int64), np.empty(shape, bool)
            self._kernel.significands(x, bits, j0, j1, digits, s, e, u)
            out.append((s, e, u))
        return out[0], out[1]
