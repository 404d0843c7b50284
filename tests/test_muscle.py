"""Tests of the virtual muscle against independent expectations (formulas, scipy integration, Welch)."""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import signal
from scipy.integrate import solve_ivp

from acquisition.simulator.muscle import AppliedPulse, MuscleParams, SimBlock, VirtualMuscle
from closedloop.errors import ConfigError

RATE = 2048.0
SUPRAMAX = (50.0, 400.0)  # mA, us: 20 uC, recruitment 1 - 3e-10

# no voluntary EMG source of any kind: only what a pulse evokes
QUIET = {"noise_rms_uv": 0.0, "powerline_uv": 0.0}


def logistic(q: float, threshold: float = 4.0, slope: float = 1.5) -> float:
    q50 = threshold + math.log(9.0) / slope
    return 1.0 / (1.0 + math.exp(-slope * (q - q50)))


def mdf_of(freqs: np.ndarray, psd: np.ndarray) -> float:
    cum = np.concatenate(([0.0], np.cumsum(0.5 * (psd[1:] + psd[:-1]) * np.diff(freqs))))
    return float(np.interp(0.5 * cum[-1], cum, freqs))


def train(muscle: VirtualMuscle, start: float, freq_hz: float, n: int, amp_pw=SUPRAMAX) -> None:
    for k in range(n):
        muscle.schedule_pulse(start + k / freq_hz, 0, *amp_pw)


# ------------------------------------------------------------------------------------------ parameters


def test_default_gains_repeat_every_four_channels() -> None:
    p = MuscleParams(n_channels=5)
    assert p.channel_gains == pytest.approx((1.0, 0.8, 0.64, 0.512, 1.0))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"rate_hz": 0.0}, "rate_hz"),
        ({"rate_hz": float("nan")}, "rate_hz"),
        ({"n_channels": 0}, "n_channels"),
        ({"n_channels": 3, "channel_gains": (1.0, 0.5)}, "channel_gains"),
        ({"emg_band_hz": (40.0, 500.0), "rate_hz": 1000.0}, "emg_band_hz"),
        ({"emg_band_hz": (200.0, 40.0)}, "emg_band_hz"),
        ({"m_max_uv": -1.0}, "m_max_uv"),
        ({"noise_rms_uv": -0.1}, "noise_rms_uv"),
        ({"artifact_uv_per_ma": float("inf")}, "artifact_uv_per_ma"),
        ({"mwave_fatigue_coupling": 1.0}, "mwave_fatigue_coupling"),
        ({"mdf_fatigue_coupling": -0.1}, "mdf_fatigue_coupling"),
        ({"slope_per_uc": 0.0}, "slope_per_uc"),
        ({"alpha_a_per_s2": 0.4}, "alpha_a_per_s2"),
        ({"seed": -1}, "seed"),
    ],
)
def test_invalid_params_rejected_naming_the_parameter(kwargs: dict, name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        MuscleParams(**kwargs)


# ------------------------------------------------------------------------------------------ recruitment


def test_recruitment_threshold_and_q50() -> None:
    m = VirtualMuscle()
    p = m.params
    assert m.q50_uc == pytest.approx(p.threshold_uc + math.log(9.0) / p.slope_per_uc)
    assert m.recruitment(p.threshold_uc) == pytest.approx(0.1, rel=1e-12)
    assert m.recruitment(m.q50_uc) == pytest.approx(0.5, rel=1e-12)
    assert m.recruitment(20.0) == pytest.approx(logistic(20.0), rel=1e-12)
    for pw in (100.0, 250.0, 1000.0):
        i_th = m.threshold_current_ma(pw)
        assert i_th * pw / 1000.0 == pytest.approx(p.threshold_uc, rel=1e-12)
        assert m.recruitment(i_th * pw / 1000.0) == pytest.approx(0.1, rel=1e-12)
    qs = np.array([0.0, 4.0, 8.0])
    np.testing.assert_allclose(m.recruitment(qs), [logistic(q) for q in qs], rtol=1e-12)


# ------------------------------------------------------------------------------------------ M-wave, artifact


@pytest.mark.parametrize("charge_uc", [3.0, 4.0, 5.5, 7.0, 20.0])
def test_mwave_ptp_equals_truth_and_starts_at_latency(charge_uc: float) -> None:
    p = MuscleParams(artifact_uv_per_ma=0.0, **QUIET)
    m = VirtualMuscle(p)
    pw = 200.0
    m.schedule_pulse(0.1003, 1, charge_uc * 1000.0 / pw, pw)
    b = m.generate(int(0.2 * RATE), 0.0)
    (pulse,) = b.pulses
    j = pulse.sample_index
    assert pulse.charge_uc == pytest.approx(charge_uc)
    assert pulse.recruitment == pytest.approx(logistic(charge_uc), rel=1e-9)
    fatigue = b.fatigue[j]
    for c in range(p.n_channels):
        expected = p.m_max_uv * 0.8**c * logistic(charge_uc) * (1.0 - 0.5 * fatigue)
        x = b.emg[j:, c].astype(float)
        ptp = float(np.ptp(x[: int(0.04 * RATE)]))
        assert ptp == pytest.approx(expected, rel=0.01)
        assert pulse.mwave_ptp_uv[c] == pytest.approx(expected, rel=0.01)
        assert m.true_mwave_ptp_uv(charge_uc, fatigue, channel=c) == pytest.approx(expected, rel=0.01)
        # onset: exactly nothing before the latency of this channel, something right after
        latency_samples = (0.004 + 0.0002 * c) * RATE
        first = int(np.flatnonzero(x)[0])
        assert first == math.floor(latency_samples) + 1
        # and it has ended by latency + duration
        assert not x[math.ceil(latency_samples + 0.010 * RATE) + 1 :].any()


def test_mwave_scales_with_fatigue_truth() -> None:
    m = VirtualMuscle()
    assert m.true_mwave_ptp_uv(20.0, 0.4) == pytest.approx(5000.0 * (1 - 0.5 * 0.4), rel=1e-6)
    assert m.true_mwave_ptp_uv(20.0, 0.4, channel=2) == pytest.approx(0.64 * 5000.0 * 0.8, rel=1e-6)


def test_artifact_proportional_to_amplitude_and_decays() -> None:
    p = MuscleParams(m_max_uv=0.0, mvc_emg_rms_uv=0.0, **QUIET)
    m = VirtualMuscle(p)
    m.schedule_pulse(0.05, 0, 10.0, 200.0)
    m.schedule_pulse(0.15, 3, 20.0, 200.0)
    m.schedule_pulse(0.25, 0, 0.0, 200.0)  # amplitude 0: no pulse
    b = m.generate(int(0.3 * RATE), 0.0)
    assert [q.amplitude_ma for q in b.pulses] == [10.0, 20.0]
    after_3ms = math.ceil(0.003 * RATE)
    peaks = []
    for pulse in b.pulses:
        j = pulse.sample_index
        seg = b.emg[j : j + int(0.05 * RATE)].astype(float)
        assert not b.emg[j - 20 : j].any()  # nothing before the pulse
        peak = seg[0]
        np.testing.assert_allclose(
            peak, 400.0 * pulse.amplitude_ma * 0.8 ** np.arange(4) * np.array([1, -1, 1, -1]), rtol=1e-6
        )
        assert (np.abs(seg[after_3ms:]) < 0.01 * np.abs(peak)).all()
        peaks.append(peak)
    np.testing.assert_allclose(peaks[1] / peaks[0], 2.0, rtol=1e-6)
    assert not b.emg[int(0.2 * RATE) :].any()


def test_powerline() -> None:
    p = MuscleParams(m_max_uv=0.0, mvc_emg_rms_uv=0.0, noise_rms_uv=0.0, powerline_uv=10.0, powerline_hz=60.0)
    b = VirtualMuscle(p, t0=5.0).generate(1000, 0.0)
    t = np.arange(1000) / RATE
    np.testing.assert_allclose(b.emg[:, 2], 10.0 * np.sin(2 * np.pi * 60.0 * t), atol=1e-4)


# ------------------------------------------------------------------------------------------ voluntary EMG


@pytest.mark.parametrize("drive", [0.3, 1.0])
def test_voluntary_emg_rms_follows_drive(drive: float) -> None:
    p = MuscleParams(fatigue_rate_scale=0.0, seed=3)
    b = VirtualMuscle(p).generate(int(10 * RATE), drive)
    rms = np.sqrt(np.mean(b.emg.astype(float) ** 2, axis=0))
    expected = np.sqrt((400.0 * 0.8 ** np.arange(4) * drive) ** 2 + 3.0**2)  # plus amplifier noise
    np.testing.assert_allclose(rms, expected, rtol=0.05)


def test_drive_zero_leaves_only_amplifier_noise() -> None:
    b = VirtualMuscle(MuscleParams(seed=1)).generate(int(2 * RATE), 0.0)
    rms = np.sqrt(np.mean(b.emg.astype(float) ** 2, axis=0))
    np.testing.assert_allclose(rms, 3.0, rtol=0.05)


def test_median_frequency_matches_welch_and_compresses_with_fatigue() -> None:
    p = MuscleParams(fatigue_rate_scale=0.0, noise_rms_uv=0.0)
    m = VirtualMuscle(p)
    b = m.generate(int(10 * RATE), 1.0)
    f, pxx = signal.welch(b.emg.astype(float) / 0.8 ** np.arange(4), fs=RATE, nperseg=2048, axis=0)
    assert mdf_of(f, pxx.mean(axis=1)) == pytest.approx(m.true_mdf_hz(0.0), rel=0.03)

    # the analytic value is that of the documented shaping filter
    sos = signal.butter(2, list(p.emg_band_hz), btype="bandpass", fs=RATE, output="sos")
    grid = np.linspace(0.0, RATE / 2, 2**15 + 1)
    _, h = signal.sosfreqz(sos, worN=grid, fs=RATE)
    assert m.true_mdf_hz(0.0) == pytest.approx(mdf_of(grid, np.abs(h) ** 2), rel=1e-4)
    mnf = float(np.sum(grid * np.abs(h) ** 2) / np.sum(np.abs(h) ** 2))
    assert m.true_mnf_hz(0.0) == pytest.approx(mnf, rel=1e-3)

    v = 1.0 - 0.4 * 0.5
    assert m.true_mdf_hz(0.5) == pytest.approx(v * m.true_mdf_hz(0.0), rel=0.02)
    assert m.true_mnf_hz(0.5) == pytest.approx(v * m.true_mnf_hz(0.0), rel=0.02)


def test_fatigued_emg_spectrum_is_compressed() -> None:
    # fast fatigue under full voluntary drive: after 5 s the muscle sits near its fatigued equilibrium
    p = MuscleParams(fatigue_rate_scale=20.0, noise_rms_uv=0.0, channel_gains=(1.0,) * 4)
    m = VirtualMuscle(p)
    m.generate(int(5 * RATE), 1.0)
    b = m.generate(int(10 * RATE), 1.0)
    assert b.fatigue.min() > 0.5
    assert np.ptp(b.freq_scale) < 0.02
    f, pxx = signal.welch(b.emg.astype(float), fs=RATE, nperseg=2048, axis=0)
    mdf = mdf_of(f, pxx.mean(axis=1))  # channels are independent realisations: average them
    assert mdf == pytest.approx(m.true_mdf_hz(float(np.median(b.fatigue))), rel=0.03)
    assert mdf < 0.85 * m.true_mdf_hz(0.0)
    assert b.freq_scale[-1] == pytest.approx(m.freq_scale(b.fatigue[-1]))


# ------------------------------------------------------------------------------------------ force


def ding_reference(p: MuscleParams, pulses: tuple[AppliedPulse, ...], ts: np.ndarray) -> np.ndarray:
    """Ding 2003 without fatigue, CN in ODE form with impulses.

    ``u' = -u / tc + sum_i r_i R_i delta(t - t_i)``, ``CN' = (u - CN) / tc``,
    ``F' = A x - F / (tau1 + tau2 x)``.
    """
    tc, a, t1, t2, km = p.tau_c_s, p.a_rest_n_per_s, p.tau1_rest_s, p.tau2_s, p.km_rest
    r0 = km + 1.04

    def rhs(_t: float, y: np.ndarray) -> list[float]:
        u, cn, f = y
        x = cn / (km + cn)
        return [-u / tc, (u - cn) / tc, a * x - f / (t1 + t2 * x)]

    out = np.full(ts.size, np.nan)
    y = np.zeros(3)
    edges = [ts[0], *[q.t for q in pulses], ts[-1] + 1.0]
    prev = None
    for i in range(len(edges) - 1):
        t_a, t_b = edges[i], edges[i + 1]
        if i > 0:
            q = pulses[i - 1]
            big_r = 1.0 if prev is None else 1.0 + (r0 - 1.0) * math.exp(-(t_a - prev) / tc)
            y = y + np.array([q.recruitment * big_r, 0.0, 0.0])
            prev = t_a
        sel = (ts >= t_a) & (ts < t_b)
        if t_b > t_a:
            sol = solve_ivp(rhs, (t_a, t_b), y, rtol=1e-9, atol=1e-9, dense_output=True)
            if sel.any():
                out[sel] = sol.sol(ts[sel])[2]
            y = sol.y[:, -1]
    return out


def test_ding_force_matches_ode_integration() -> None:
    p = MuscleParams(fatigue_rate_scale=0.0, **QUIET)
    m = VirtualMuscle(p, t0=10.0)
    train(m, 10.05, 30.0, 30)
    b = m.generate(int(1.5 * RATE), 0.0)
    assert len(b.pulses) == 30
    assert all(q.recruitment > 0.999 for q in b.pulses)
    ref = ding_reference(p, b.pulses, b.timestamps)
    peak = ref.max()
    assert peak > 50.0
    np.testing.assert_allclose(b.force_n, ref, atol=0.01 * peak)
    np.testing.assert_array_equal(b.force_n, b.f_stim_n)
    assert not b.f_vol_n.any()


def test_ding_force_with_partial_recruitment_matches_ode() -> None:
    p = MuscleParams(fatigue_rate_scale=0.0, **QUIET)
    m = VirtualMuscle(p)
    for k, q in enumerate([4.0, 6.0, 5.0, 8.0, 5.5, 4.5, 7.0, 6.5, 5.0, 20.0]):
        m.schedule_pulse(0.02 + k * 0.04 + 0.013 * (k % 3), k % 2, q * 10.0, 100.0)
    b = m.generate(int(0.8 * RATE), 0.0)
    ref = ding_reference(p, b.pulses, b.timestamps)
    np.testing.assert_allclose(b.force_n, ref, atol=0.01 * ref.max())


def test_force_frequency_relation() -> None:
    def plateau(freq: float, n: int) -> float:
        m = VirtualMuscle()
        train(m, 0.0, freq, n)
        b = m.generate(int(1.2 * RATE), 0.0)
        return float(b.force_n.max())

    twitch = plateau(1.0, 1)
    f20 = plateau(20.0, 20)
    f50 = plateau(50.0, 50)
    assert f50 > f20 > twitch > 0


def test_fatigue_during_long_train_and_recovery() -> None:
    m = VirtualMuscle(MuscleParams(n_channels=1))
    train(m, 0.0, 30.0, 60 * 30)
    b = m.generate(int(60 * RATE), 0.0)
    early_peak = b.force_n[: int(2 * RATE)].max()
    end = b.force_n[-int(0.5 * RATE) :].mean()
    assert end < 0.8 * early_peak
    assert b.fatigue[0] == 0.0
    assert b.fatigue[-1] > 0.2
    assert np.all(np.diff(b.fatigue) >= 0)  # monotone under continuous stimulation
    assert b.mwave_scale[-1] == pytest.approx(1 - 0.5 * b.fatigue[-1])
    # M-waves of the last pulses are smaller, by the truth's factor
    first, last = b.pulses[0], b.pulses[-1]
    ratio = last.mwave_ptp_uv[0] / first.mwave_ptp_uv[0]
    assert ratio == pytest.approx(1 - 0.5 * b.fatigue[last.sample_index], rel=1e-6)
    st_end = m.state
    assert st_end.a_n_per_s < 3009.0 and st_end.tau1_s > 0.050957 and st_end.km > 0.103

    rest = m.generate(int(30 * RATE), 0.0)
    assert not rest.pulses
    assert rest.fatigue[-1] < rest.fatigue[0]
    # the last twitches still load the muscle for a moment; after that it only recovers
    assert np.all(np.diff(rest.fatigue[int(0.5 * RATE) :]) <= 0)
    assert m.state.fatigue == pytest.approx(rest.fatigue[0] * math.exp(-30 / 127), rel=0.1)


def test_fatigue_off_keeps_state_at_rest() -> None:
    m = VirtualMuscle(MuscleParams(fatigue_rate_scale=0.0))
    train(m, 0.0, 40.0, 40)
    b = m.generate(int(1.5 * RATE), 0.7)
    assert not b.fatigue.any()
    assert m.state.a_n_per_s == 3009.0


@pytest.mark.parametrize("drive", [0.25, 0.5, 0.75])
def test_twitch_interpolation(drive: float) -> None:
    def added_force(d: float) -> float:
        with_pulse, without = VirtualMuscle(), VirtualMuscle()
        with_pulse.schedule_pulse(1.0, 0, *SUPRAMAX)
        a = with_pulse.generate(int(1.4 * RATE), d)
        b = without.generate(int(1.4 * RATE), d)
        return float(np.max(a.force_n - b.force_n))

    at_rest = added_force(0.0)
    assert at_rest > 10.0
    assert added_force(drive) == pytest.approx((1.0 - drive) * at_rest, rel=0.05)


def test_voluntary_force_follows_low_passed_drive() -> None:
    m = VirtualMuscle(MuscleParams(fatigue_rate_scale=0.0))
    b = m.generate(int(0.5 * RATE), 0.5)
    t = np.arange(b.force_n.size) / RATE
    expected = 0.5 * 300.0 * (1.0 - np.exp(-(t + 1 / RATE) / 0.05))
    np.testing.assert_allclose(b.force_n, expected, rtol=1e-9, atol=1e-9)
    assert m.state.drive_lp == pytest.approx(0.5, rel=1e-3)


def test_state_gives_the_next_sample() -> None:
    m = VirtualMuscle()
    train(m, 0.0, 25.0, 5)
    m.generate(333, 0.0)
    st_before = m.state
    b = m.generate(1, 0.0)
    assert st_before.t == b.timestamps[0]
    assert st_before.f_ding_n == b.force_n[0]


# ------------------------------------------------------------------------------------------ blocks, timing


def run_split(p: MuscleParams, cuts: list[int], n: int) -> tuple[dict[str, np.ndarray], list[tuple]]:
    m = VirtualMuscle(p, t0=1234.5)
    for k in range(25):
        m.schedule_pulse(1234.5 + 0.011 + k * 0.0371, k % 3, 6.0 + 2.0 * k, 300.0)
    drive = 0.5 + 0.45 * np.sin(np.arange(n) / 250.0)
    edges = [0, *sorted(set(cuts)), n]
    blocks = [m.generate(b - a, drive[a:b]) for a, b in itertools.pairwise(edges)]
    fields = (
        "timestamps",
        "emg",
        "force_n",
        "drive",
        "fatigue",
        "mwave_scale",
        "freq_scale",
        "f_stim_n",
        "f_vol_n",
    )
    arrays = {f: np.concatenate([getattr(blk, f) for blk in blocks]) for f in fields}
    pulses = [
        (q.sample_index, q.t, q.recruitment, q.late, *q.mwave_ptp_uv.tolist()) for blk in blocks for q in blk.pulses
    ]
    return arrays, pulses


# strong fatigue so that the EMG filter design changes many times within the run
SPLIT_PARAMS = MuscleParams(fatigue_rate_scale=40.0, powerline_uv=5.0, fatigue_update_s=0.01)
SPLIT_N = 2500
_WHOLE = run_split(SPLIT_PARAMS, [], SPLIT_N)


@settings(max_examples=6, deadline=None, database=None)
@given(st.lists(st.integers(min_value=1, max_value=SPLIT_N - 1), max_size=40))
def test_chunking_invariance(cuts: list[int]) -> None:
    arrays, pulses = run_split(SPLIT_PARAMS, cuts, SPLIT_N)
    whole_arrays, whole_pulses = _WHOLE
    assert np.unique(whole_arrays["freq_scale"]).size > 10
    assert len(whole_pulses) == 25
    for name, value in whole_arrays.items():
        np.testing.assert_array_equal(arrays[name], value, err_msg=name)
    assert pulses == whole_pulses


def test_split_in_blocks_of_eight_is_identical() -> None:
    arrays, pulses = run_split(SPLIT_PARAMS, list(range(8, SPLIT_N, 8)), SPLIT_N)
    for name, value in _WHOLE[0].items():
        np.testing.assert_array_equal(arrays[name], value, err_msg=name)
    assert pulses == _WHOLE[1]


def test_same_seed_same_output_other_seed_differs() -> None:
    a = VirtualMuscle(MuscleParams(seed=7)).generate(500, 0.5)
    b = VirtualMuscle(MuscleParams(seed=7)).generate(500, 0.5)
    c = VirtualMuscle(MuscleParams(seed=8)).generate(500, 0.5)
    np.testing.assert_array_equal(a.emg, b.emg)
    assert not np.array_equal(a.emg, c.emg)


def test_block_shapes_and_types() -> None:
    m = VirtualMuscle(MuscleParams(n_channels=3), t0=2.0)
    b = m.generate(16, np.linspace(-0.5, 1.5, 16))
    assert isinstance(b, SimBlock)
    assert len(b) == 16
    assert b.emg.shape == (16, 3) and b.emg.dtype == np.float32
    assert b.timestamps.dtype == np.float64
    np.testing.assert_allclose(b.timestamps, 2.0 + np.arange(16) / RATE)
    assert b.drive.min() == 0.0 and b.drive.max() == 1.0
    assert m.now == pytest.approx(2.0 + 16 / RATE)
    assert len(m.generate(0, 0.3)) == 0


def test_pulse_timing_and_late_pulses() -> None:
    m = VirtualMuscle(t0=100.0)
    m.generate(100, 0.0)
    now = m.now
    m.schedule_pulse(now - 0.01, 2, 20.0, 200.0)  # in the past: late, applied at the next sample
    m.schedule_pulse(now + 10 / RATE, 0, 20.0, 200.0)  # exactly on a sample
    m.schedule_pulse(now + 20.5 / RATE, 1, 20.0, 200.0)  # between samples: the next one
    b = m.generate(40, 0.0)
    late, on, between = b.pulses
    assert late.late and late.sample_index == 100 and late.t == b.timestamps[0] and late.channel == 2
    assert late.requested_t == pytest.approx(now - 0.01)
    assert not on.late and on.sample_index == 110 and on.t == b.timestamps[10]
    assert not between.late and between.sample_index == 121


def test_pulse_in_a_later_block_waits() -> None:
    m = VirtualMuscle()
    m.schedule_pulse(0.5, 0, 20.0, 200.0)
    assert not m.generate(int(0.25 * RATE), 0.0).pulses
    (pulse,) = m.generate(int(0.5 * RATE), 0.0).pulses
    assert pulse.sample_index == 1024 and not pulse.late


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"amplitude_ma": float("nan")}, "amplitude_ma"),
        ({"amplitude_ma": -1.0}, "amplitude_ma"),
        ({"pulse_width_us": float("nan")}, "pulse_width_us"),
        ({"pulse_width_us": -200.0}, "pulse_width_us"),
        ({"t": float("nan")}, "t"),
        ({"channel": -1}, "channel"),
    ],
)
def test_bad_pulses_rejected(kwargs: dict, name: str) -> None:
    args = {"t": 0.1, "channel": 0, "amplitude_ma": 10.0, "pulse_width_us": 200.0, **kwargs}
    with pytest.raises(ConfigError, match=name):
        VirtualMuscle().schedule_pulse(**args)


def test_bad_drive_rejected() -> None:
    m = VirtualMuscle()
    with pytest.raises(ConfigError, match="NaN"):
        m.generate(8, float("nan"))
    with pytest.raises(ConfigError, match="NaN"):
        m.generate(3, np.array([0.1, np.nan, 0.2]))
    with pytest.raises(ConfigError, match="shape"):
        m.generate(3, np.zeros(4))
    with pytest.raises(ConfigError, match="n"):
        m.generate(-1, 0.0)
    assert m.n_generated == 0


def test_block_of_8_by_64_is_fast() -> None:
    m = VirtualMuscle(MuscleParams(n_channels=64))
    times = []
    for i in range(600):
        if i % 8 == 0:
            m.schedule_pulse(m.now + 0.001, 0, 30.0, 300.0)
        t = time.perf_counter()
        m.generate(8, 0.3)
        times.append(time.perf_counter() - t)
    assert float(np.median(times)) < 1e-3
