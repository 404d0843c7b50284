"""Compiled inner loops for the batched estimator (replays), with numba when it is there.

The batched path (:meth:`~closedloop.estimation.interval.IntervalEstimator.step_many`) spends most of its time
in a few passes over every sample. Where numpy cannot do a pass without temporaries or a loop over
channels, a kernel here does it in one compiled loop: each computes exactly the arithmetic of the numpy
code it stands in for, in the same order, so the numbers are bitwise the same with or without it
(``tests/test_kernels.py`` checks each against that code). Two exceptions: the ``nlms`` weight recursion,
where numpy's matrix product goes through BLAS (its summation order and fused multiply-adds are its own):
the weights, and so the estimates, agree to about 1e-16 relative; and the Welch periodograms, whose FFT is the
kernel's own (16 channels side by side instead of scipy's one at a time, about 1.5 times as fast): the powers agree
with scipy's to about 1e-15 of each periodogram's largest bin, the spectral indices to about 1e-14 relative.
The volitional window products are summed in the order of numpy's einsum (its SSE2 loop, on every x86-64
wheel); on a numpy that sums in another order :data:`~closedloop.estimation._kernels.window_products_exact` is
False and those batches use numpy.

Only an estimator made with ``compiled=True`` uses them (``closedloop replay``); the live loop never does,
as a first call in a process loads numba (about a second) and, the first time on a machine, compiles
(several seconds: the result is cached beside this file, or in the user's cache folder where that is not
writable). :func:`load` does all of that up front, before a replay's clock starts.

Set ``CLOSEDLOOP_JIT=0`` to run without them (the numpy code, slower, the same numbers).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import threading
import warnings
from types import ModuleType

__all__ = ["available", "load"]

_lock = threading.Lock()
_module: ModuleType | None = None
_tried = False


def available() -> bool:
    """Whether the kernels can be used: numba is installed and ``CLOSEDLOOP_JIT`` is not ``0``."""
    if os.environ.get("CLOSEDLOOP_JIT", "1").strip() in ("0", "false", "no", "off"):
        return False
    return importlib.util.find_spec("numba") is not None


def load() -> ModuleType | None:
    """The compiled kernels (:mod:`closedloop.estimation._kernels`), loaded and ready to call; None where
    :func:`available` says no. The first call in a process takes about a second (numba's start), the first on
    a machine several (compiling); later calls return at once."""
    global _module, _tried
    with _lock:
        if not _tried:
            _tried = True
            if available():
                try:
                    mod = importlib.import_module("closedloop.estimation._kernels")
                except ImportError as exc:  # e.g. a numba that does not support this numpy
                    warnings.warn(f"compiled kernels unavailable ({exc}); using numpy", RuntimeWarning, stacklevel=2)
                else:
                    mod.warm_up()
                    _module = mod
        return _module
