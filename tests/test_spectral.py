"""Spectral indices on analytic spectra; the streaming Welch estimate against scipy and against known filters."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import signal

from closedloop.errors import ConfigError
from closedloop.estimation.spectral import StreamingWelch, spectral_indices

FS = 2048.0
GRID = np.arange(129) * 8.0  # the bins of a 256-sample periodogram at 2048 Hz


# ---------------------------------------------------------------------------------------------------------
# spectral_indices


def test_flat_band_spectrum_has_mdf_and_mnf_at_its_centre():
    psd = np.where((GRID >= 96) & (GRID <= 304), 2.5, 0.0)
    mdf, mnf, _ = spectral_indices(GRID, psd)
    assert isinstance(mdf, float) and isinstance(mnf, float)
    assert mdf == pytest.approx(200.0, rel=1e-12)
    assert mnf == pytest.approx(200.0, rel=1e-12)
    # several channels at once, and the band cutting a spectrum that is flat everywhere: bins 24..448 Hz
    psd2 = np.stack([psd, np.ones_like(GRID), np.where(GRID >= 400, 1.0, 0.0)], axis=1)
    mdf2, mnf2, fi2 = spectral_indices(GRID, psd2)
    assert mdf2.shape == mnf2.shape == fi2.shape == (3,)
    np.testing.assert_allclose(mdf2, [200.0, 236.0, 424.0], rtol=1e-12)
    np.testing.assert_allclose(mnf2, [200.0, 236.0, 424.0], rtol=1e-12)


def test_two_line_spectrum():
    psd = np.zeros_like(GRID)
    psd[GRID == 80.0] = 3.0
    psd[GRID == 200.0] = 1.0
    mdf, mnf, fi = spectral_indices(GRID, psd)
    assert mnf == pytest.approx((3 * 80 + 1 * 200) / 4, rel=1e-12)
    # cumulative power at the bin centres (midpoint rule): 1.5 at 80 Hz, 3 at 88 Hz; half the total (2) is
    # reached a third of the way from 80 to 88 Hz
    assert mdf == pytest.approx(80.0 + 8.0 / 3.0, rel=1e-12)
    assert fi == pytest.approx((3 / 80 + 1 / 200) / (3 * 80**5 + 200**5), rel=1e-12)
    # equal lines: the cumulative power sits at exactly half between them; the median is the middle
    psd[GRID == 200.0] = 3.0
    assert spectral_indices(GRID, psd)[0] == pytest.approx(140.0, rel=1e-12)
    # a single line is its own median and mean
    single = np.where(GRID == 160.0, 7.0, 0.0)
    assert spectral_indices(GRID, single)[:2] == pytest.approx((160.0, 160.0), rel=1e-12)


def _sum_k5(n):
    """1^5 + 2^5 + ... + n^5 (Faulhaber)."""
    return Fraction(n * n * (n + 1) ** 2 * (2 * n * n + 2 * n - 1), 12)


def test_fi_nsm5_of_a_flat_spectrum_against_the_sums_by_hand():
    freqs = np.arange(0.0, 1001.0)  # 1 Hz bins
    psd = np.full_like(freqs, 4.0)
    # bins 1..4 Hz: (1 + 1/2 + 1/3 + 1/4) / (1 + 32 + 243 + 1024) = (25/12) / 1300 = 1/624
    assert spectral_indices(freqs, psd, band_hz=(1.0, 4.0))[2] == pytest.approx(1 / 624, rel=1e-12)
    # bins 20..450 Hz: harmonic numbers and Faulhaber's formula
    inv = sum(Fraction(1, k) for k in range(20, 451))
    fifth = _sum_k5(450) - _sum_k5(19)
    expected = float(inv / fifth)
    mdf, mnf, fi = spectral_indices(freqs, psd, band_hz=(20.0, 450.0))
    assert fi == pytest.approx(expected, rel=1e-12)
    assert mdf == pytest.approx(235.0, rel=1e-12) and mnf == pytest.approx(235.0, rel=1e-12)
    # scale-free in the PSD, but not in the frequency unit: f^-1 / f^5 is f^-6, so Hz -> kHz is x 1e18
    assert spectral_indices(freqs, psd * 1e-9)[2] == pytest.approx(spectral_indices(freqs, psd)[2], rel=1e-12)
    fi_khz = spectral_indices(freqs / 1e3, psd, band_hz=(0.02, 0.45))[2]
    assert fi_khz == pytest.approx(expected * 1e18, rel=1e-9)


def test_fi_nsm5_rises_and_mdf_falls_when_power_moves_down():
    fresh = np.exp(-0.5 * ((GRID - 150.0) / 50.0) ** 2)
    fatigued = np.exp(-0.5 * ((GRID - 100.0) / 50.0) ** 2)
    mdf0, mnf0, fi0 = spectral_indices(GRID, fresh)
    mdf1, mnf1, fi1 = spectral_indices(GRID, fatigued)
    assert mdf1 < mdf0 and mnf1 < mnf0 and fi1 > fi0


def test_zero_power_gives_nan_without_warnings():
    zero = np.zeros_like(GRID)
    assert all(math.isnan(v) for v in spectral_indices(GRID, zero))
    # power only outside the band counts as zero too; the other channel is unaffected
    outside = np.where(GRID == 600.0, 1.0, 0.0)
    psd = np.stack([outside, np.ones_like(GRID)], axis=1)
    mdf, mnf, fi = spectral_indices(GRID, psd)
    assert np.isnan([mdf[0], mnf[0], fi[0]]).all()
    assert np.isfinite([mdf[1], mnf[1], fi[1]]).all()


@pytest.mark.parametrize("band", [(0.0, 450.0), (450.0, 20.0), (20.0, float("inf")), (1030.0, 1040.0), "wide"])
def test_spectral_indices_rejects_bad_bands(band):
    with pytest.raises(ConfigError, match="band_hz"):
        spectral_indices(GRID, np.ones_like(GRID), band_hz=band)


def test_spectral_indices_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="psd"):
        spectral_indices(GRID, np.ones(10))


# ---------------------------------------------------------------------------------------------------------
# StreamingWelch


def test_defaults():
    sw = StreamingWelch(FS, 2)
    assert (sw.nperseg, sw.hop, sw.ring_size, sw.min_segments) == (256, 128, 15, 7)
    np.testing.assert_array_equal(sw.freqs, GRID)
    assert StreamingWelch(1000.0, 1).nperseg == 128  # 125 samples -> nearest power of two
    assert StreamingWelch(FS, 1, window_s=0.05).ring_size == 1  # shorter than a segment: one periodogram


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(0, 6000),
    c=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
    sizes=st.lists(st.one_of(st.just(0), st.just(1), st.integers(0, 300), st.integers(0, 6000)), max_size=30),
    window_s=st.sampled_from([0.1, 0.5, 1.0, 2.0]),
)
def test_streaming_psd_equals_scipy_welch_over_the_ring(n, c, seed, sizes, window_s):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c)) * rng.uniform(0.1, 100.0, c)
    sw = StreamingWelch(FS, c, window_s=window_s)
    i = 0
    for s in [*sizes, n]:
        s = min(s, n - i)
        sw.step(x[i : i + s], np.ones(s, dtype=bool))
        i += s
    nps, hop, k = sw.nperseg, sw.hop, sw.ring_size
    n_total = 0 if n < nps else (n - nps) // hop + 1
    assert sw.n_segments == min(k, n_total)
    assert sw.segments_pushed == n_total and sw.segments_rejected == 0
    res = sw.psd()
    if n_total == 0:
        assert res is None
        return
    assert res is not None
    freqs, psd = res
    end = nps + (n_total - 1) * hop
    start = end - nps - (sw.n_segments - 1) * hop
    f_ref, p_ref = signal.welch(
        x[start:end], FS, window="hann", nperseg=nps, noverlap=nps // 2, detrend=False, scaling="density", axis=0
    )
    np.testing.assert_array_equal(freqs, f_ref)
    assert psd.shape == p_ref.shape == (nps // 2 + 1, c)
    np.testing.assert_allclose(psd / psd.sum(axis=0), p_ref / p_ref.sum(axis=0), rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(psd, p_ref, rtol=1e-9)  # the documented scaling is welch's own


def _bandlimited_noise(seconds=10.0, channels=8, seed=11):
    sos = signal.butter(4, [50.0, 150.0], btype="bandpass", output="sos", fs=FS)
    rng = np.random.default_rng(seed)
    return sos, signal.sosfilt(sos, rng.standard_normal((round(seconds * FS), channels)), axis=0)


def test_mdf_of_bandlimited_noise_matches_the_filter_response():
    sos, x = _bandlimited_noise()
    sw = StreamingWelch(FS, x.shape[1], window_s=10.0)
    for chunk in np.array_split(x, 313):
        sw.step(chunk, np.ones(chunk.shape[0], dtype=bool))
    assert sw.n_segments == 159
    _, h = signal.sosfreqz(sos, worN=sw.freqs, fs=FS)
    mdf_true = spectral_indices(sw.freqs, np.abs(h) ** 2)[0]
    mdf = sw.indices()[0]
    # One channel's MDF scatters by about 1.6 % (10 s of 100 Hz-wide noise); the channel mean by about 0.6 %.
    assert abs(mdf.mean() / mdf_true - 1) < 0.03
    assert np.all(np.abs(mdf / mdf_true - 1) < 0.08)


def test_periodic_gaps_barely_move_the_mdf():
    _, x = _bandlimited_noise(channels=4)
    t = np.arange(x.shape[0]) / FS
    valid = (t * 35.0) % 1.0 >= 0.1  # blanking 10 % of every 35 Hz period
    assert valid.mean() == pytest.approx(0.9, abs=0.002)
    plain = StreamingWelch(FS, 4, window_s=10.0)
    gated = StreamingWelch(FS, 4, window_s=10.0)
    for chunk, v in zip(np.array_split(x, 97), np.array_split(valid, 97), strict=True):
        plain.step(chunk, np.ones(v.shape[0], dtype=bool))
        gated.step(chunk * 1e6 * ~v[:, None] + chunk * v[:, None], v)  # what is gated out must not matter
    assert gated.n_segments == plain.n_segments == 159
    np.testing.assert_allclose(gated.indices()[0], plain.indices()[0], rtol=0.05)
    assert gated.ring_valid_fraction.min() > 0.85


def test_mostly_invalid_segments_are_not_counted():
    rng = np.random.default_rng(5)
    sw = StreamingWelch(FS, 2)
    nps, hop = sw.nperseg, sw.hop
    valid = np.ones(nps, dtype=bool)
    valid[: int(0.6 * nps)] = False  # 60 % invalid
    sw.step(rng.standard_normal((nps, 2)), valid)
    assert sw.n_segments == 0 and sw.segments_rejected == 1 and sw.psd() is None
    # the next segment (the second half of that one, 20 % invalid, and a valid hop) counts
    sw.step(rng.standard_normal((hop, 2)), np.ones(hop, dtype=bool))
    assert sw.n_segments == 1 and sw.segments_rejected == 1
    assert sw.ring_valid_fraction[0] == (valid[hop:].sum() + hop) / nps
    # NaN samples are gaps too
    y = rng.standard_normal((nps, 2))
    y[:200] = np.nan
    sw.step(y, np.ones(nps, dtype=bool))
    assert sw.segments_rejected >= 2
    assert np.isfinite(sw.psd()[1]).all()


def test_indices_wait_for_enough_segments_and_reset_forgets():
    rng = np.random.default_rng(9)
    sw = StreamingWelch(FS, 3, window_s=1.0, min_segments=4)
    nps, hop = sw.nperseg, sw.hop
    sw.step(rng.standard_normal((nps + 2 * hop, 3)))  # 3 segments
    assert sw.n_segments == 3 and sw.psd() is not None and sw.indices() is None
    sw.step(rng.standard_normal((hop, 3)))
    res = sw.indices()
    assert res is not None and all(v.shape == (3,) for v in res)
    sw.reset()
    assert sw.n_segments == 0 and sw.n_samples == 0 and sw.psd() is None and sw.indices() is None
    sw.step(np.empty((0, 3)), np.empty(0, dtype=bool))
    assert sw.n_samples == 0


def test_wrong_shapes_raise_value_error():
    sw = StreamingWelch(FS, 2)
    with pytest.raises(ValueError, match="2"):
        sw.step(np.zeros((10, 3)), np.ones(10, dtype=bool))
    with pytest.raises(ValueError, match="valid"):
        sw.step(np.zeros((10, 2)), np.ones(9, dtype=bool))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"rate_hz": 0.0}, "rate_hz"),
        ({"n_channels": 0}, "n_channels"),
        ({"nperseg": 255}, "nperseg"),
        ({"nperseg": 2}, "nperseg"),
        ({"window_s": 0.0}, "window_s"),
        ({"band_hz": (0.0, 450.0)}, "band_hz"),
        ({"band_hz": (20.0, 1100.0)}, "band_hz"),
        ({"min_segments": 0}, "min_segments"),
        ({"min_segments": 16}, "min_segments"),
    ],
)
def test_invalid_parameters_raise_config_error_naming_them(kwargs, name):
    args = {"rate_hz": FS, "n_channels": 2, **kwargs}
    with pytest.raises(ConfigError, match=name):
        StreamingWelch(**args)
