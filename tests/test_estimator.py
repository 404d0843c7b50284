"""Known-answer tests of the per-interval estimator."""

import math

import numpy as np
import pytest

from closedloop.errors import ConfigError
from closedloop.estimation.interval import EstimatorConfig, IntervalEstimator, detrended_rms, mvc_from_efforts
from closedloop.estimation.segmenter import Interval
from closedloop.types import StreamInfo

FS = 2000.0


def _info(n_ch=2, unit="microvolts"):
    return StreamInfo("emg", "EMG", FS, tuple(f"c{i}" for i in range(n_ch)), (unit,))


def _interval(x, t0=10.0, index=0):
    ts = t0 + np.arange(x.shape[0]) / FS
    return Interval(index, 0, x, ts)


def test_detrended_rms_of_a_sine_on_a_ramp():
    t = np.arange(4000) / FS
    x = (3.0 + 50.0 * t + 100.0 * np.sin(2 * np.pi * 100 * t))[:, None]
    assert detrended_rms(x)[0] == pytest.approx(100 / math.sqrt(2), rel=1e-3)


def test_mwave_and_volitional_windows_measure_what_was_put_there():
    p = 4  # pulse lands 2 ms into the interval
    n = p + 80  # volitional window: 20..40 ms after the pulse
    x = np.zeros((n, 2))
    x[p : p + 4] = 5000.0  # artifact, blanked: must not count
    t_rel = (np.arange(n) - p) / FS
    # an asymmetric biphasic M-wave: +800 uV half sine (6-8 ms), then -400 uV half sine (8-10 ms)
    phase = np.sin(2 * np.pi * 250 * (t_rel - 0.006))
    mwave = np.where((t_rel >= 0.006) & (t_rel < 0.008), 800.0, 0.0) * phase
    mwave += np.where((t_rel >= 0.008) & (t_rel < 0.010), 400.0, 0.0) * phase
    x[:, 0] += mwave  # ptp 1200 uV
    x[:, 1] += 0.25 * mwave
    # 4 periods of a 200 Hz cosine, even about the window's centre: nothing for a linear detrend to remove
    t_mid = (0.020 + (n - 1 - p) / FS) / 2
    vol = np.cos(2 * np.pi * 200 * (t_rel - t_mid)) * 40.0
    late = t_rel >= 0.020
    x[late, 0] += vol[late]
    est = IntervalEstimator(_info(), EstimatorConfig(mwave_window_s=(0.003, 0.020), smoothing_s=0.0))
    e = est.step(_interval(x), pulse_t=10.0 + p / FS, amplitude_ma=12.0)
    assert e.amplitude_ma == 12.0 and e.has_pulse
    assert e.t_start == pytest.approx(10.0 + p / FS)
    np.testing.assert_allclose(e.channel_mwave_ptp_uv, [1200.0, 300.0], rtol=1e-6)
    assert e.channel_mwave_latency_s[0] == pytest.approx(0.007, abs=0.5 / FS)  # the +800 uV peak
    # area: the rectified M-wave we put there, summed over the window (rectangle rule), in uV*s; close to the
    # continuous integral of the two half sines, (800 + 400) * 2 / (2 pi 250)
    assert e.channel_mwave_area_uvs[0] == pytest.approx(np.abs(mwave).sum() / FS, rel=1e-6)
    assert e.channel_mwave_area_uvs[0] == pytest.approx((800 + 400) * 2 / (2 * np.pi * 250), rel=0.06)
    assert e.channel_effort_uv[0] == pytest.approx(40 / math.sqrt(2), rel=1e-3)
    assert e.channel_effort_uv[1] == pytest.approx(0.0, abs=1e-9)
    assert e.warnings == ()


def test_units_are_converted_to_microvolts():
    x = np.zeros((80, 1))
    x[20:40, 0] = np.sin(np.linspace(0, 2 * np.pi, 20)) * 1e-3  # 1 mV amplitude, in volts
    est = IntervalEstimator(_info(1, "V"))
    e = est.step(_interval(x), pulse_t=10.0)
    assert e.mwave_ptp_uv == pytest.approx(2000.0, rel=0.02)


def test_without_a_pulse_the_whole_interval_is_volitional():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 25.0, (4000, 1))
    est = IntervalEstimator(_info(1))
    e = est.step(_interval(x))
    assert not e.has_pulse and math.isnan(e.mwave_ptp_uv)
    assert e.effort_uv == pytest.approx(np.std(x), rel=0.01)


def test_smoothing_is_an_exponential_average_over_intervals():
    est = IntervalEstimator(_info(1), EstimatorConfig(smoothing_s=0.1))
    t = np.arange(80) / FS
    one = np.sin(2 * np.pi * 100 * t)[:, None]
    e1 = est.step(_interval(10 * one))
    e2 = est.step(_interval(20 * one, index=1))
    alpha = 1 - math.exp(-0.04 / 0.1)
    assert e2.effort_smooth_uv == pytest.approx(e1.effort_uv + alpha * (e2.effort_uv - e1.effort_uv))


def test_percent_mvc_after_calibration():
    est = IntervalEstimator(_info(2), EstimatorConfig(smoothing_s=0.0))
    alternating = (-1.0) ** np.arange(80)  # RMS 1, and (almost) nothing for the linear detrend to take
    x = np.column_stack([alternating] * 2) * 50.0
    assert math.isnan(est.step(_interval(x)).effort_pct_mvc)
    est.set_mvc(np.array([200.0, 100.0]))
    assert est.step(_interval(x)).effort_pct_mvc == pytest.approx(25.0, rel=1e-3)


def test_short_interval_and_nonfinite_samples_are_flagged_not_guessed():
    est = IntervalEstimator(_info(1), EstimatorConfig(mwave_window_s=(0.003, 0.020)))
    e = est.step(_interval(np.ones((30, 1))), pulse_t=10.0)  # 15 ms: too short for the M-wave window
    assert any("too short for the M-wave window" in w for w in e.warnings)
    assert math.isnan(e.effort_uv)
    x = np.ones((80, 1))
    x[5, 0] = np.nan
    e = est.step(_interval(x), pulse_t=10.0)
    assert "non-finite samples in interval" in e.warnings
    assert math.isnan(e.effort_uv) and math.isnan(e.mwave_ptp_uv)


def test_mvc_is_the_best_half_second_average():
    efforts = np.r_[np.full(10, 10.0), np.full(25, 100.0), np.full(10, 10.0)][:, None]  # 40 ms intervals
    assert mvc_from_efforts(efforts, 0.04, 0.5)[0] == pytest.approx(100.0)
    efforts[12, 0] = 1000.0  # one outlier interval is averaged, not taken
    assert mvc_from_efforts(efforts, 0.04, 0.5)[0] < 200.0
    with pytest.raises(ConfigError):
        mvc_from_efforts(np.full((5, 1), np.nan), 0.04)


def test_bad_configuration_is_refused():
    with pytest.raises(ConfigError, match="mwave_window_s"):
        EstimatorConfig(mwave_window_s=(0.02, 0.01))
    with pytest.raises(ConfigError, match="control_channel"):
        IntervalEstimator(_info(2), EstimatorConfig(control_channel=5))
