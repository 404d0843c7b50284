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


def _close_periodograms(got: np.ndarray, ref: np.ndarray, tol: float = 1e-13) -> None:
    """``(S, C, F)`` periodograms equal to ``tol`` times each (segment, channel)'s largest power."""
    assert got.shape == ref.shape
    if ref.size:
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
    spec = sp_fft.rfft(segs * window, axis=-1)[..., first : first + n_f]
    _close_periodograms(got, spec.real**2 + spec.imag**2, 1e-14)


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
