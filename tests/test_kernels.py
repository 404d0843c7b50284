"""The compiled kernels compute bitwise what the numpy/scipy code they replace computes.

Each kernel is checked against its reference (scipy's own function, or the estimator's numpy path) on random
inputs, including the shapes at the edges (one channel, empty chunks, tiles cut short); the whole estimator
with and without them must give identical estimates.
"""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import signal

from closedloop.estimation import kernels
from closedloop.estimation.filters import SOSFilter, bandpass_sos, notch_sos
from closedloop.estimation.interval import EstimatorConfig, IntervalEstimator
from closedloop.estimation.segmenter import Interval
from closedloop.estimation.spectral import StreamingWelch, _band_indices
from closedloop.estimation.volitional import (
    METHODS,
    VolitionalEstimator,
    _gathered_errors,
    _gathered_products,
    _products,
    _sum_sq,
)
from closedloop.types import StreamInfo

K = kernels.load()
needs_kernels = pytest.mark.skipif(K is None, reason="numba not installed or CLOSEDLOOP_JIT=0")


@needs_kernels
@settings(max_examples=60, deadline=None)
@given(
    n_ch=st.integers(1, 70),
    chunks=st.lists(st.integers(0, 300), min_size=1, max_size=4),
    notch=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_sosfilt_kernel_is_scipys_sosfilt(n_ch, chunks, notch, seed):
    """Chunk by chunk with carried state, the kernel gives scipy.signal.sosfilt of the whole signal, bit for bit."""
    assume(sum(chunks) > 0)
    rng = np.random.default_rng(seed)
    sos = notch_sos(50.0, 2048.0, 30.0, up_to_hz=450.0) if notch else bandpass_sos(20.0, 450.0, 2048.0, 4)
    x = rng.standard_normal((sum(chunks), n_ch)) * 100.0 + 30.0
    zi0 = signal.sosfilt_zi(sos)[:, :, None] * x[0]
    ref, zf = signal.sosfilt(sos, x, axis=0, zi=zi0)
    f = SOSFilter(sos, n_ch, initial="first_sample")
    f.kernels = K
    out, at = [], 0
    for n in chunks:
        out.append(f.step(x[at : at + n]))
        at += n
    got = np.concatenate(out)
    assert np.array_equal(got, ref)
    assert np.array_equal(f.zi, zf)


def _intervals(n_ch: int, seconds: float, rate: float, stim_hz: float, seed: int = 1):
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    x = signal.lfilter(*signal.butter(2, [30, 150], btype="bandpass", fs=rate), rng.standard_normal((n, n_ch)), axis=0)
    x *= 50.0
    period = rate / stim_hz
    pulses = np.round(np.arange(0.0, n - period, period)).astype(int)
    t = np.arange(int(period)) / rate
    wave = 3000 * np.exp(-t / 0.0005) + np.where((t > 0.004) & (t < 0.014), 1500 * np.sin(2 * np.pi * 100 * t), 0.0)
    for p in pulses:
        seg = wave[: min(wave.size, n - p)]
        x[p : p + seg.size] += seg[:, None] * rng.uniform(0.8, 1.2)
    ts = np.arange(n) / rate
    bounds = [*pulses.tolist(), n]
    return [(Interval(k, a, x[a:b], ts[a:b]), [ts[a]]) for k, (a, b) in enumerate(itertools.pairwise(bounds))]


def _irregular(n_ch: int, rate: float, seed: int = 2):
    """Intervals of 6 to 60 ms (M-wave windows cut short by the next pulse), a doublet, intervals without a
    pulse, and one with a NaN sample: every branch of the batched stages."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(round(0.006 * rate), round(0.06 * rate), 160)
    n = int(lens.sum())
    x = rng.standard_normal((n, n_ch)) * 40.0
    bounds = np.concatenate(([0], np.cumsum(lens)))
    ts = np.arange(n) / rate
    out = []
    for k, (a, b) in enumerate(itertools.pairwise(bounds.tolist())):
        x[a : a + 6] += 2500.0 * rng.uniform(0.5, 1.5)  # the artifact at the pulse
        times = [] if k % 17 == 5 else [ts[a]]
        if k % 23 == 7 and b - a > 12:  # a second pulse 3 samples later: a doublet
            times.append(ts[a + 3])
        if k == 90:
            x[a + 5, 1] = np.nan
        out.append((Interval(k, a, x[a:b], ts[a:b]), times))
    return out


def _run(ivs, info, cfg, compiled: bool, batch: int):
    est = IntervalEstimator(info, cfg, compiled=compiled)
    out = []
    for i in range(0, len(ivs), batch):
        part = ivs[i : i + batch]
        out += est.step_many([iv for iv, _ in part], [t for _, t in part], [12.0] * len(part))
    return out


@needs_kernels
@pytest.mark.parametrize(
    ("method", "history"), [("nlms", 2), ("nlms", 1), ("nlms", 3), ("gs", 2), ("gs", 3), ("comb", 1), ("post", 2)]
)
def test_the_estimator_gives_the_same_estimates_with_the_kernels(method, history):
    n_ch = 6
    info = StreamInfo("t", "EMG", 2048.0, tuple(f"c{i}" for i in range(n_ch)), ("microvolts",), "t")
    cfg = EstimatorConfig(method=method, notch_hz=50.0, history=history)
    ivs = _intervals(n_ch, 4.0, 2048.0, 40.0)
    _same(_run(ivs, info, cfg, False, 37), _run(ivs, info, cfg, True, 37), NLMS_RTOL if method == "nlms" else 0.0)


#: The spectral indices, from the Welch kernel's own FFT (see welch_periodograms), agree to this.
SPECTRAL_RTOL = 1e-12
SPECTRAL_FIELDS = ("channel_mdf_hz", "channel_mnf_hz", "channel_fi_nsm5")


def _same(plain, fast, rtol: float = 0.0):
    """Every field of every estimate identical (NaN == NaN), numbers to ``rtol`` where it is not 0, the spectral
    indices to ``SPECTRAL_RTOL`` at least."""
    assert len(plain) == len(fast)
    for a, b in zip(plain, fast, strict=True):
        for name in a.__dataclass_fields__:
            u, v = getattr(a, name), getattr(b, name)
            tol = max(rtol, SPECTRAL_RTOL) if name in SPECTRAL_FIELDS else rtol
            if tol and isinstance(u, (float, np.ndarray)):
                np.testing.assert_allclose(v, u, rtol=tol, atol=0.0, equal_nan=True, err_msg=f"{a.index} {name}")
            elif isinstance(u, np.ndarray):
                assert np.array_equal(u, v, equal_nan=True), (a.index, name)
            elif isinstance(u, float) and math.isnan(u):
                assert math.isnan(v), (a.index, name)
            else:
                assert u == v, (a.index, name)


#: The nlms weight recursion is the one kernel that differs from numpy in the last bit (numpy's matmul goes
#: through BLAS); its estimates agree to this.
NLMS_RTOL = 1e-12


def test_closedloop_jit_0_turns_the_kernels_off():
    code = "from closedloop.estimation import kernels; print(kernels.available(), kernels.load())"
    env = {**os.environ, "CLOSEDLOOP_JIT": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "None"]


@needs_kernels
@pytest.mark.parametrize("method", ["nlms", "gs"])
def test_irregular_intervals_give_the_same_estimates_with_the_kernels(method):
    n_ch = 5
    info = StreamInfo("t", "EMG", 2048.0, tuple(f"c{i}" for i in range(n_ch)), ("microvolts",), "t")
    ivs = _irregular(n_ch, 2048.0)
    cfg = EstimatorConfig(method=method)
    _same(_run(ivs, info, cfg, False, 29), _run(ivs, info, cfg, True, 29), NLMS_RTOL if method == "nlms" else 0.0)


@needs_kernels
@settings(max_examples=30, deadline=None)
@given(n_ch=st.integers(1, 9), chunks=st.lists(st.integers(0, 700), min_size=1, max_size=5), seed=st.integers(0, 2**31))
def test_welch_with_the_kernels_is_welch_without(n_ch, chunks, seed):
    """The same segments kept, the same periodograms to 1e-13 of each one's largest bin (the kernel's FFT sums in
    its own order), the same ring; the indices to SPECTRAL_RTOL."""
    rng = np.random.default_rng(seed)
    plain = StreamingWelch(2048.0, n_ch, band_hz=(20.0, 450.0), band_only=True)
    fast = StreamingWelch(2048.0, n_ch, band_hz=(20.0, 450.0), band_only=True)
    fast.kernels = K
    for n in chunks:
        x = rng.standard_normal((n_ch, n)) * 50.0
        valid = rng.random(n) > 0.1
        (ea, ka, pa), (eb, kb, pb) = plain.push_channels_first(x, valid), fast.push_channels_first(x, valid)
        assert np.array_equal(ea, eb) and np.array_equal(ka, kb) and pa.shape == pb.shape
        _close_periodograms(pb, pa)
    _close_periodograms(fast.ring.transpose(0, 2, 1), plain.ring.transpose(0, 2, 1))
    a, b = plain.indices(), fast.indices()
    assert (a is None) == (b is None)
    for u, v in zip(a or (), b or (), strict=True):
        np.testing.assert_allclose(v, u, rtol=SPECTRAL_RTOL)


def _close_periodograms(got: np.ndarray, ref: np.ndarray, tol: float = 1e-13, scale: np.ndarray | None = None) -> None:
    """``(S, C, F)`` periodograms equal to ``tol`` times each (segment, channel)'s largest power (or ``scale``
    ``(S, C, 1)``: an FFT's rounding is relative to the whole spectrum's power, not the bins compared)."""
    assert got.shape == ref.shape
    if ref.size:
        if scale is None:
            scale = np.abs(ref).max(axis=-1, keepdims=True)
        assert np.all(np.abs(got - ref) <= tol * scale), np.max(np.abs(got - ref) / np.where(scale > 0, scale, 1))


@needs_kernels
@settings(max_examples=60, deadline=None)
@given(
    log_n=st.integers(2, 10),
    n_ch=st.integers(1, 40),
    n_seg=st.integers(0, 6),
    bins=st.data(),
    seed=st.integers(0, 2**31),
)
def test_the_welch_kernel_is_scipys_rfft(log_n, n_ch, n_seg, bins, seed):
    """The kernel's powers of windowed segments (any starts, any bins from 0 Hz to Nyquist, channel counts that do
    and do not fill its lanes) are |scipy.fft.rfft|^2 of the same windowed samples, to 1e-14 of the largest."""
    from scipy import fft as sp_fft

    n = 1 << log_n
    first = bins.draw(st.integers(0, n // 2))
    n_f = bins.draw(st.integers(1, n // 2 + 1 - first))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_ch, 3 * n)) * rng.uniform(1e-3, 1e3)
    x[:, rng.integers(0, 3 * n)] = 0.0
    starts = np.sort(rng.integers(0, 2 * n + 1, n_seg)).astype(np.int64)
    window = signal.get_window("hann", n) * rng.uniform(0.1, 10.0)
    got = np.full((n_seg, n_ch, n_f), np.nan)
    K.welch_periodograms(x, starts, window, first, got, *K.fft_tables(n, first, n_f))
    segs = np.stack([x[:, a : a + n] for a in starts]) if n_seg else np.empty((0, n_ch, n))
    power = np.abs(sp_fft.rfft(segs * window, axis=-1)) ** 2
    _close_periodograms(got, power[..., first : first + n_f], 1e-14, power.max(axis=-1, keepdims=True))


@needs_kernels
def test_welch_keeps_scipys_fft_for_segments_of_other_lengths():
    """nperseg not a power of two: the kernels leave the FFT to scipy, and the periodograms are bitwise numpy's."""
    rng = np.random.default_rng(3)
    plain = StreamingWelch(2000.0, 3, nperseg=250, band_hz=(20.0, 450.0))
    fast = StreamingWelch(2000.0, 3, nperseg=250, band_hz=(20.0, 450.0))
    fast.kernels = K
    x = rng.standard_normal((3, 1500))
    for u, v in zip(plain.push_channels_first(x), fast.push_channels_first(x), strict=True):
        assert np.array_equal(u, v)


@needs_kernels
@settings(max_examples=80, deadline=None)
@given(
    m=st.integers(1, 60),
    n=st.integers(1, 40),
    seed=st.integers(0, 2**31),
    zeros=st.floats(0.0, 0.9),
    spoil=st.sampled_from(["none", "nan", "inf", "zero", "lines"]),
)
def test_median_frequency_kernel_is_the_numpy_median_frequency(m, n, seed, zeros, spoil):
    """Spectra with empty bins, single and twin lines, all-zero and non-finite columns: the kernel's MDF is the
    numpy code's, bit for bit (NaN where the numpy code says NaN)."""
    rng = np.random.default_rng(seed)
    f = np.sort(rng.uniform(1.0, 500.0, m))
    p = rng.exponential(1.0, (m, n)) * (rng.random((m, n)) >= zeros)
    if spoil == "nan":
        p[rng.integers(m), rng.integers(n)] = np.nan
    elif spoil == "inf":
        p[rng.integers(m), rng.integers(n)] = np.inf
    elif spoil == "zero":
        p[:, rng.integers(n)] = 0.0
    elif spoil == "lines":  # two equal lines in one column: the median is the middle of the flat stretch
        p[:, 0] = 0.0
        p[rng.integers(m), 0] = p[rng.integers(m), 0] = 2.0
    plain = _band_indices(f, f**-1, f**5, p)
    fast = _band_indices(f, f**-1, f**5, p, K)
    for u, v in zip(plain, fast, strict=True):
        assert np.array_equal(u, v, equal_nan=True)


@needs_kernels
@settings(max_examples=40, deadline=None)
@given(n_ch=st.integers(1, 9), n_u=st.integers(1, 8), seed=st.integers(0, 2**31))
def test_ring_means_kernel_weighs_by_numpys_mean_of_each_updates_ring(n_ch, n_u, seed):
    rng = np.random.default_rng(seed)
    ring = rng.exponential(1.0, (20, n_ch, 7)) * 10.0 ** rng.uniform(-4, 4, (20, n_ch, 7))
    counts = rng.integers(1, 11, n_u)
    upto = counts + rng.integers(0, 21 - counts)
    weighted = rng.uniform(0.5, 2.0, (7, n_u, n_ch))
    expected = weighted.copy()
    for u in range(n_u):
        expected[:, u] *= ring[upto[u] - counts[u] : upto[u]].mean(axis=0).T
    K.weigh_ring_means(ring, upto, counts, weighted)
    assert np.array_equal(weighted, expected)


@needs_kernels
@settings(max_examples=40, deadline=None)
@given(n_ch=st.integers(1, 5), n_u=st.integers(1, 6), seed=st.integers(0, 2**31))
def test_advance_lags_kernel_decays_then_adds_step_by_step(n_ch, n_u, seed):
    """Each step: the rows in use times the step's decay, then that step's sums added to their lags."""
    rng = np.random.default_rng(seed)
    lags = np.zeros((12, n_ch))
    rows = np.sort(rng.choice(11, rng.integers(0, 8), replace=False)).astype(np.int64)
    lags[rows] = rng.standard_normal((rows.size, n_ch))
    decay = np.where(rng.random(n_u) < 0.3, 1.0, rng.uniform(0.5, 1.0, n_u))
    per_step = [
        rng.choice(rows, rng.integers(0, rows.size + 1), replace=False) if rows.size else rows for _ in range(n_u)
    ]
    group_lag = np.concatenate([*per_step, np.empty(0, np.int64)]).astype(np.int64)
    bounds = np.concatenate(([0], np.cumsum([g.size for g in per_step]))).astype(np.int64)
    sums = rng.standard_normal((group_lag.size, n_ch))
    expected, snaps = lags.copy(), []
    for u in range(n_u):
        for r in rows.tolist():
            expected[r] = expected[r] * decay[u]
        for g in range(bounds[u], bounds[u + 1]):
            expected[group_lag[g]] = expected[group_lag[g]] + sums[g]
        snaps.append(expected[rows].copy())
    out = np.empty((n_u, rows.size, n_ch))
    K.advance_lags(lags, rows, decay, bounds, group_lag, sums, out)
    assert np.array_equal(lags, expected)
    assert np.array_equal(out, np.array(snaps).reshape(out.shape))


def _layout(rng, est: VolitionalEstimator, n_old: int, segs: list[tuple[int, int]]) -> SimpleNamespace:
    """``n_old`` past segments kept from an earlier call (in ``est``) and new ones ``(length, gap before)`` in a
    channels-first ``y``, planned by the numpy code (:meth:`VolitionalEstimator._plan`): the samples ``src`` of
    all of them side by side (the numpy code's layout) and ``y``, ``old``, ``begin`` (the kernels')."""
    n_ch, b0 = est.n_channels, est.blank_n
    lens = [ln for ln, _ in segs]
    old_lens = np.where(rng.random(n_old) < 0.3, rng.integers(15, 18, n_old), rng.integers(8, 90, n_old))
    old = [rng.standard_normal((n_ch, int(m))) * 10.0 ** rng.uniform(-3, 3) for m in old_lens]
    starts = np.cumsum([segs[0][1]] + [ln + g for ln, (_, g) in zip(lens[:-1], segs[1:], strict=True)])
    starts = starts.astype(np.int64)
    ends = starts + np.array(lens, np.int64)
    y = rng.standard_normal((n_ch, int(ends[-1]) + 3)) * 10.0 ** rng.uniform(-3, 3)
    positions = 5000 + starts
    est._past = [(int(4000 + 100 * i), seg) for i, seg in enumerate(old)]
    n_past, n, lags, lo, hi = est._plan(starts, ends, positions)
    src = np.concatenate([*old, y[:, starts[0] : ends[-1]]], axis=1)
    off_old = np.cumsum([0, *(seg.shape[1] for seg in old)]).astype(np.int64)
    return SimpleNamespace(
        y=y,
        src=src,
        off=np.concatenate([off_old[:-1], off_old[-1] + starts - starts[0]]),
        own=int(off_old[-1] - starts[0]),  # y[:, t] is src[:, t + own]
        old=np.concatenate(old, axis=1) if old else np.empty((n_ch, 0)),
        begin=np.concatenate([off_old[:-1], starts]).astype(np.int64),
        starts=starts,
        ends=ends,
        positions=positions,
        plan=(n_past, n, lags, lo, hi),
        idx=np.flatnonzero(n_past),
        b0=b0,
    )


#: segments (length, gap before): any length, and those at the edges (16 = blank_n + min_n, 41 = post_n)
_SEGMENTS = st.lists(
    st.tuples(st.one_of(st.integers(3, 90), st.sampled_from([15, 16, 17, 40, 41, 42])), st.integers(0, 4)),
    min_size=1,
    max_size=9,
)


@needs_kernels
@settings(max_examples=150, deadline=None)
@given(
    method=st.sampled_from(METHODS),
    hist=st.integers(1, 3),
    n_old=st.integers(0, 3),
    segs=_SEGMENTS,
    seed=st.integers(0, 2**31),
)
def test_plan_segments_kernel_is_the_numpy_plan(method, hist, n_old, segs, seed):
    """Past segments kept or not, segments too short to predict, ``post``: the kernel's plan is ``_plan``'s."""
    rng = np.random.default_rng(seed)
    est = VolitionalEstimator(method, 2, 6, (6, 41), 41, 10, hist)
    lay = _layout(rng, est, min(n_old, est.history), segs)
    est.kernels = K
    *plan, begin = est._plan_compiled(lay.starts, lay.ends, lay.positions)
    for got, ref in zip(plan, lay.plan, strict=True):
        assert got.dtype == ref.dtype
        assert np.array_equal(got, ref)
    assert np.array_equal(begin, lay.begin)


@needs_kernels
@pytest.mark.parametrize("width", [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 35, 64, 200])
def test_window_products_exact_says_whether_the_kernel_sums_as_einsum(width):
    """On a numpy whose einsum sums in another order (other SIMD) the flag is False: the estimator then uses numpy
    for its batches' products; where it is True the sums agree for windows of any width."""
    rng = np.random.default_rng(width)
    y = rng.standard_normal((5, 2 * width + 2)) * 10.0 ** rng.uniform(-6, 6, (5, 2 * width + 2))
    begin, rows, n = np.array([0, width + 1], np.int64), np.ones(1, np.int64), np.full(2, width + 1, np.int64)
    gram, cross = np.empty((1, 1, 1, 5)), np.empty((1, 1, 5))
    K.window_products(y, y[:, :0].copy(), begin, 0, rows, np.array([0, 1]), n, 1, 1 + width, 1, gram, cross)
    a, b = y[:, width + 2 : 2 * width + 2], y[:, 1 : width + 1]  # the windows [1, 1 + width) (or [1, n) if narrow)
    same = np.array_equal(cross[0, 0], np.einsum("...l,...l->...", b, a))
    same &= np.array_equal(gram[0, 0, 0], np.einsum("...l,...l->...", b, b))
    assert same or not K.window_products_exact


@needs_kernels
def test_segments_without_exact_window_products_are_the_numpy_segments(monkeypatch):
    rng = np.random.default_rng(3)
    plain = VolitionalEstimator("gs", 3, 6, (6, 41), 41, 10, 2)
    fast = VolitionalEstimator("gs", 3, 6, (6, 41), 41, 10, 2)
    fast.kernels = K
    monkeypatch.setattr(K, "window_products_exact", False)
    starts = np.arange(6, dtype=np.int64) * 60
    y = rng.standard_normal((3, 360))
    y_plain, y_fast = y.copy(), y.copy()
    a = plain.segments(y_plain, starts, starts + 60, 100 + starts)
    b = fast.segments(y_fast, starts, starts + 60, 100 + starts)
    assert np.array_equal(y_fast, y_plain)
    assert np.array_equal(a.weights, b.weights)


needs_exact = pytest.mark.skipif(
    K is None or not K.window_products_exact, reason="numpy's einsum sums in another order here: kernel not used"
)


@needs_kernels
@needs_exact
@settings(max_examples=120, deadline=None)
@given(
    n_ch=st.integers(1, 9),
    hist=st.integers(1, 3),
    n_old=st.integers(0, 3),
    segs=_SEGMENTS,
    fit=st.sampled_from([(6, 41), (3, 20), (8, 9), (6, 90)]),
    seed=st.integers(0, 2**31),
)
def test_window_products_kernel_is_the_numpy_products(n_ch, hist, n_old, segs, fit, seed):
    """Segments of every length (windows cut short, too short to predict), a past kept from an earlier call or
    none: the kernel's products over the fit windows are the numpy code's, bit for bit (einsum's sums)."""
    rng = np.random.default_rng(seed)
    est = VolitionalEstimator("gs", n_ch, 6, fit, 41, 10, hist)
    lay = _layout(rng, est, min(n_old, hist), segs)
    n_past, n = lay.plan[:2]
    assume(lay.idx.size > 0)
    k = len(est._past) + lay.idx
    m0, m1 = est._fit_windows(n[lay.idx])
    gram, cross = _gathered_products(lay.src, lay.off, k, m0, m1, np.arange(hist) < n_past[lay.idx, None])
    got_g = np.full(gram.shape[1:] + gram.shape[:1], np.nan)  # channels last
    got_c = np.full(cross.shape[1:] + cross.shape[:1], np.nan)
    K.window_products(lay.y, lay.old, lay.begin, len(est._past), lay.idx, n_past, n, *fit, 6, got_g, got_c)
    assert np.array_equal(got_g.transpose(3, 0, 1, 2), gram)
    assert np.array_equal(got_c.transpose(2, 0, 1), cross)


@needs_kernels
@settings(max_examples=120, deadline=None)
@given(
    n_ch=st.integers(1, 9),
    hist=st.integers(1, 3),
    n_old=st.integers(0, 3),
    segs=_SEGMENTS,
    seed=st.integers(0, 2**31),
)
def test_prediction_error_kernel_is_the_numpy_prediction_error(n_ch, hist, n_old, segs, seed):
    """The kernel reads the past segments from ``y`` itself (segments from the last to the first) and from the
    kept ones: the numpy code's prediction errors, which read a copy, bit for bit; the gaps are untouched."""
    rng = np.random.default_rng(seed)
    est = VolitionalEstimator("gs", n_ch, 6, (6, 41), 41, 10, hist)
    lay = _layout(rng, est, min(n_old, hist), segs)
    n_past, n = lay.plan[:2]
    idx = lay.idx
    assume(idx.size > 0)
    w = rng.standard_normal((n_ch, idx.size, hist)) * (np.arange(hist) < n_past[idx, None])
    gain = np.sqrt(1.0 + _sum_sq(w))
    n_old = len(est._past)
    expected = lay.y.copy()
    _gathered_errors(expected, lay.src, lay.off, lay.own, lay.starts[idx], n_old + idx, n_past[idx], 6, n[idx], w, gain)
    w_last, gain_last = np.ascontiguousarray(w.transpose(1, 2, 0)), np.ascontiguousarray(gain.T)  # channels last
    K.prediction_error(lay.y, lay.old, lay.begin, n_old, idx, n_past, 6, n, w_last, gain_last)
    assert np.array_equal(lay.y, expected)


@needs_kernels
@settings(max_examples=80, deadline=None)
@given(
    n_ch=st.integers(1, 5),
    method=st.sampled_from(METHODS),
    hist=st.integers(1, 3),
    fit=st.sampled_from([(6, 41), (3, 20), (8, 9)]),
    calls=st.lists(_SEGMENTS, min_size=1, max_size=3),
    seed=st.integers(0, 2**31),
)
def test_segments_with_the_kernels_are_the_numpy_segments(n_ch, method, hist, fit, calls, seed):
    """Consecutive batches of pulse segments (one segment, short ones, windows of different lengths, the past
    carried from call to call): every output and the state after each call are the numpy path's, bit for bit but
    for the nlms weight recursion (NLMS_RTOL)."""
    rng = np.random.default_rng(seed)
    plain = VolitionalEstimator(method, n_ch, 6, fit, 41, 10, hist)
    fast = VolitionalEstimator(method, n_ch, 6, fit, 41, 10, hist)
    fast.kernels = K
    rtol = NLMS_RTOL if method == "nlms" else 0.0
    pos = 1000
    for segs in calls:
        lens = np.array([s for s, _ in segs], np.int64)
        starts = np.cumsum([0] + [s + g for s, g in segs[:-1]]).astype(np.int64) + segs[0][1]
        y = rng.standard_normal((n_ch, int(starts[-1] + lens[-1]) + 2)) * 50.0
        positions = pos + starts
        pos = int(positions[-1] + lens[-1]) + 7
        y_plain, y_fast = y.copy(), y.copy()
        a = plain.segments(y_plain, starts, starts + lens, positions)
        b = fast.segments(y_fast, starts, starts + lens, positions)
        assert a.method == b.method
        for name in ("lo", "hi", "n_past", "lags"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
        if rtol:
            np.testing.assert_allclose(y_fast, y_plain, rtol=rtol, atol=0.0)
            np.testing.assert_allclose(b.weights, a.weights, rtol=rtol, atol=0.0)
            np.testing.assert_allclose(fast._w, plain._w, rtol=rtol, atol=0.0)
        else:
            assert np.array_equal(y_fast, y_plain)
            assert np.array_equal(b.weights, a.weights)
        assert [p for p, _ in fast._past] == [p for p, _ in plain._past]
        assert all(np.array_equal(u, v) for (_, u), (_, v) in zip(fast._past, plain._past, strict=True))


@needs_kernels
@settings(max_examples=100, deadline=None)
@given(
    n_ch=st.integers(1, 9),
    n_p=st.integers(1, 12),
    hist=st.integers(1, 3),
    n_old=st.integers(0, 3),
    silent=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_nlms_steps_kernel_is_the_nlms_weights_and_gains(n_ch, n_p, hist, n_old, silent, seed):
    """Weights, gains and the state after the segments: bit for bit what ``_weights`` gives with the
    ``nlms_weights`` kernel (and ``_sum_sq``), and within NLMS_RTOL of numpy's; the first segments of a stream
    (fewer past segments) and a channel without power (trace 0) included."""
    rng = np.random.default_rng(seed)
    n_past = np.minimum(hist, np.arange(n_p) + n_old)
    n_past = np.maximum(n_past, 1)
    x = rng.standard_normal((n_ch, n_p, hist + 1, 12)) * 10.0 ** rng.uniform(-3, 3)
    if silent:
        x[0] = 0.0
    present = np.arange(hist) < n_past[:, None]
    gram, cross = _products(x[:, :, hist], [x[:, :, j] for j in range(hist)], present)
    start = rng.standard_normal((n_ch, hist))
    mu = rng.uniform(0.05, 1.0)
    ests = []
    for kern in (K, None):
        est = VolitionalEstimator("nlms", n_ch, 6, (6, 41), 41, 10, hist, mu=mu)
        est.kernels = kern
        est._w[:] = start
        w = est._weights(gram, cross, n_past)
        ests.append((w, np.sqrt(1.0 + _sum_sq(w)), est._w.copy()))
    state = start.copy()
    w, gain = np.empty((n_p, hist, n_ch)), np.empty((n_p, n_ch))  # channels last
    rows = np.sort(rng.choice(n_p + 3, n_p, replace=False))  # the segments' rows among those of a batch
    weights = np.zeros((n_p + 3, n_ch, hist))
    past_of_row = np.zeros(n_p + 3, np.int64)
    past_of_row[rows] = n_past
    gram, cross = np.ascontiguousarray(gram.transpose(1, 2, 3, 0)), np.ascontiguousarray(cross.transpose(1, 2, 0))
    K.nlms_steps(gram, cross, rows, past_of_row, mu, state, w, gain, weights)
    w, gain = w.transpose(2, 0, 1), gain.T
    assert np.array_equal(w, ests[0][0])
    assert np.array_equal(weights[rows], w.transpose(1, 0, 2))
    assert not np.delete(weights, rows, axis=0).any()
    assert np.array_equal(gain, ests[0][1])
    assert np.array_equal(state, ests[0][2])
    for got, ref in zip((w, gain, state), ests[1], strict=True):
        # rounding in the recursion is relative to the weights' size, not to an element that nearly cancels out
        np.testing.assert_allclose(got, ref, rtol=NLMS_RTOL, atol=NLMS_RTOL * float(np.abs(ref).max()))
