"""Controllers against hand-computed expectations, plus a property test of their output bounds."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from closedloop.errors import ConfigError
from closedloop.types import Burst, ControlContext, Estimate
from controllers import (
    CONTROLLERS,
    PID,
    Constant,
    Controller,
    EMGTriggered,
    FatigueCompensation,
    ProportionalAssist,
    PulseSchedule,
    Ramp,
    RecruitmentSweep,
    Trapezoid,
)

NAN = math.nan
INF = math.inf


def est(effort: float = NAN, mwave: float = NAN, amp: float = NAN, index: int = 0) -> Estimate:
    """An Estimate of one control channel with the values a controller reads; everything else NaN."""
    one = np.full(1, NAN)
    return Estimate(
        index=index,
        t_start=0.0,
        t_end=0.0,
        amplitude_ma=amp,
        effort_uv=NAN,
        effort_smooth_uv=NAN,
        effort_pct_mvc=effort,
        mwave_ptp_uv=mwave,
        channel_effort_uv=one,
        channel_mwave_ptp_uv=np.array([mwave]),
        channel_mwave_area_uvs=one,
        channel_mwave_latency_s=one,
        channel_effort_pct_mvc=one,
        channel_mwave_ptp_rel=one,
        channel_mwave_area_rel=one,
        channel_mdf_hz=one,
        channel_mnf_hz=one,
        channel_fi_nsm5=one,
        has_pulse=math.isfinite(amp),
    )


def ctx(t: float, period: float = 0.02, force: float = NAN) -> ControlContext:
    return ControlContext(t_s=t, period_s=period, phase="test", force_n=force)


def at(controller, t: float, effort: float = NAN, period: float = 0.02):
    return controller.step(est(effort), ctx(t, period))


def run_efforts(controller, efforts, period: float) -> list:
    """Step once per period (t = k * period) with the given efforts."""
    return [controller.step(est(e, index=k), ctx(k * period, period)) for k, e in enumerate(efforts)]


@dataclass
class Sequence:
    """Test stub: returns the given outputs in turn (the last one repeated)."""

    outputs: list
    i: int = 0

    def step(self, estimate, ctx):
        out = self.outputs[min(self.i, len(self.outputs) - 1)]
        self.i += 1
        return out

    def reset(self):
        self.i = 0


# -- registry and dataclass contract ----------------------------------------------------------------------------


def test_registry_names_and_loader_friendly_fields():
    assert set(CONTROLLERS) == {
        "constant",
        "ramp",
        "trapezoid",
        "recruitment_sweep",
        "pulse_schedule",
        "emg_triggered",
        "proportional",
        "pid",
        "fatigue_compensation",
    }
    plain = {float, int, str, bool, tuple[float, ...], Controller}
    for cls in CONTROLLERS.values():
        assert dataclasses.is_dataclass(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name.startswith("_"):
                assert not f.init and not f.repr, (cls.__name__, f.name)
            else:
                assert f.init and hints[f.name] in plain, (cls.__name__, f.name, hints[f.name])


def examples() -> list:
    return [
        Constant(5.0),
        Ramp(0.0, 10.0, 1.0),
        Trapezoid(20.0, on_s=5.0, off_s=5.0),
        RecruitmentSweep(2.0, 10.0, 2.0),
        PulseSchedule((1.0,), 30.0),
        EMGTriggered(on_pct=20, off_pct=10, refractory_s=1, amplitude_ma=15, hold_s=1),
        ProportionalAssist(),
        PID(kp=1.0),
        FatigueCompensation(Constant(20.0), max_boost_ma=5.0),
    ]


def test_every_controller_satisfies_the_protocol():
    assert {type(c) for c in examples()} == set(CONTROLLERS.values())
    for c in examples():
        assert isinstance(c, Controller)


@pytest.mark.parametrize("t", [NAN, INF, -INF, -1.0])
def test_a_broken_context_time_gives_no_pulse_or_a_valid_one(t):
    for c in examples():
        out = c.step(est(effort=25.0, mwave=1000.0, amp=20.0), ControlContext(t_s=t, period_s=0.02, force_n=1.0))
        amplitudes = out.amplitudes_ma if isinstance(out, Burst) else (out,)
        assert all(math.isfinite(a) and a >= 0 for a in amplitudes), (c, out)


# -- open loop ----------------------------------------------------------------------------------------------------


def test_constant():
    c = Constant(7.5)
    assert at(c, 0.0) == 7.5 and at(c, 100.0, effort=NAN) == 7.5


@pytest.mark.parametrize(
    ("t", "expected"),
    [(0.0, 0.0), (0.999, 0.0), (1.0, 4.0), (1.5, 6.0), (2.0, 8.0), (2.75, 11.0), (3.0, 12.0), (60.0, 12.0)],
)
def test_ramp_values(t, expected):
    assert at(Ramp(start_ma=4.0, end_ma=12.0, ramp_s=2.0, delay_s=1.0), t) == pytest.approx(expected)


def test_ramp_down_and_zero_duration():
    assert at(Ramp(10.0, 2.0, 4.0), 1.0) == pytest.approx(8.0)
    assert at(Ramp(10.0, 2.0, 4.0), 4.0) == 2.0
    step = Ramp(0.0, 10.0, 0.0, delay_s=0.5)
    assert at(step, 0.49) == 0.0 and at(step, 0.5) == 10.0


TRAPEZOID = {"amplitude_ma": 20.0, "on_s": 2.0, "off_s": 1.0, "ramp_up_s": 1.0, "ramp_down_s": 1.0, "delay_s": 0.5}


@pytest.mark.parametrize(
    ("t", "expected", "segment"),
    [
        (0.4, 0.0, "delay"),
        (0.5, 0.0, "ramp_up"),  # ramps start at start_ma = 0: no pulse
        (1.0, 10.0, "ramp_up"),
        (1.5, 20.0, "on"),
        (3.4, 20.0, "on"),
        (3.5, 20.0, "ramp_down"),  # the end of the plateau belongs to the ramp down
        (4.0, 10.0, "ramp_down"),
        (4.5, 0.0, "off"),
        (5.4, 0.0, "off"),
        (5.5, 0.0, "ramp_up"),  # second cycle
        (6.0, 10.0, "ramp_up"),
        (7.0, 20.0, "on"),
        (9.0, 10.0, "ramp_down"),
        (10.5, 0.0, "done"),  # cycles=2 are over
        (11.0, 0.0, "done"),
    ],
)
def test_trapezoid_values_and_cycle_limit(t, expected, segment):
    tz = Trapezoid(**TRAPEZOID, cycles=2)
    assert at(tz, t) == pytest.approx(expected)
    assert tz.segment(t) == segment
    assert tz.is_on(t) == (segment in ("ramp_up", "on", "ramp_down"))


def test_trapezoid_repeats_forever_with_cycles_0_and_start_ma():
    tz = Trapezoid(**TRAPEZOID)
    assert at(tz, 11.0) == pytest.approx(10.0)  # third cycle, halfway up
    assert tz.duration_s == INF and Trapezoid(**TRAPEZOID, cycles=2).duration_s == 10.5
    tz = Trapezoid(**TRAPEZOID, start_ma=8.0)
    assert at(tz, 0.5) == 8.0 and at(tz, 1.0) == pytest.approx(14.0) and at(tz, 4.0) == pytest.approx(14.0)
    assert at(tz, 4.5) == 0.0  # off time: no pulses, not start_ma


def test_trapezoid_5_on_5_off_gives_exactly_250_pulses_per_contraction_at_50hz():
    # t_s = k * 0.02 misses 5.0 or 10.0 by an ulp for some k: boundaries must not gain or lose a pulse
    tz = Trapezoid(20.0, on_s=5.0, off_s=5.0, cycles=3)
    out = np.array([at(tz, k * 0.02) for k in range(2000)])
    assert (out[:250] == 20).all() and (out[250:500] == 0).all()
    assert (out > 0).sum() == 750 and out[1500:].max() == 0


def sweep_outputs(sweep: RecruitmentSweep, n: int, period: float = 0.05) -> list[float]:
    return [at(sweep, k * period, period=period) for k in range(n)]


def test_recruitment_sweep_levels_and_directions():
    assert RecruitmentSweep(2.0, 6.0, 2.0, direction="up").levels() == (2.0, 4.0, 6.0)
    assert RecruitmentSweep(2.0, 6.0, 2.0, direction="down").levels() == (6.0, 4.0, 2.0)
    assert RecruitmentSweep(2.0, 6.0, 2.0).levels() == (2.0, 4.0, 6.0, 4.0, 2.0)
    assert RecruitmentSweep(0.5, 2.0, 0.3, direction="up").levels() == (0.5, 0.8, 1.1, 1.4, 1.7, 2.0)
    assert RecruitmentSweep(2.0, 9.0, 3.0, direction="up").levels() == (2.0, 5.0, 8.0)  # never above stop_ma
    assert RecruitmentSweep(5.0, 5.0, 1.0).levels() == (5.0,)


def test_recruitment_sweep_down_one_pulse_per_period():
    sweep = RecruitmentSweep(2.0, 6.0, 2.0, direction="down")
    out = sweep_outputs(sweep, 3)
    assert out == [6.0, 4.0, 2.0] and not sweep.done
    assert sweep_outputs(sweep, 5)[3:] == [0.0, 0.0] and sweep.done
    sweep.reset()
    assert not sweep.done


def test_recruitment_sweep_every_n_periods():
    sweep = RecruitmentSweep(2.0, 6.0, 2.0, direction="up", every_n_periods=2)
    out = []
    for k in range(7):
        out.append(at(sweep, k * 0.1, period=0.1))
        assert sweep.done == (k >= 6)
    assert out == [2.0, 0.0, 4.0, 0.0, 6.0, 0.0, 0.0]
    assert sweep.duration_s(0.1) == pytest.approx(0.6)


def test_recruitment_sweep_up_down_pulses_per_level_and_gaps():
    sweep = RecruitmentSweep(2.0, 6.0, 2.0, pulses_per_level=2, every_n_periods=3)
    out = sweep_outputs(sweep, 33)
    pulses = {k: a for k, a in enumerate(out) if a > 0}
    assert pulses == {0: 2, 3: 2, 6: 4, 9: 4, 12: 6, 15: 6, 18: 4, 21: 4, 24: 2, 27: 2}
    assert sweep.done and sweep.duration_s(0.05) == pytest.approx(30 * 0.05)


def test_pulse_schedule_serves_each_time_once_even_with_coarse_steps():
    sched = PulseSchedule(times_s=(1.0, 1.05, 3.0), amplitude_ma=30.0)
    out = [at(sched, k * 0.5, period=0.5) for k in range(10)]
    bursts = [k for k, o in enumerate(out) if isinstance(o, Burst)]
    assert bursts == [2, 3, 6]  # 1.0 at t=1.0, 1.05 late at t=1.5, 3.0 at t=3.0
    assert all(o == 0.0 for k, o in enumerate(out) if k not in bursts)
    assert out[2] == Burst((30.0, 30.0), 0.01)
    assert sched.done and sched.n_served == 3
    sched.reset()
    assert not sched.done and isinstance(at(sched, 1.0), Burst)


def test_pulse_schedule_single_pulses_and_triplets():
    single = PulseSchedule((0.0,), 25.0, n_pulses=1)
    assert at(single, 0.0) == 25.0 and at(single, 0.02) == 0.0
    triplet = PulseSchedule((0.5,), 25.0, n_pulses=3, interval_ms=5.0)
    assert at(triplet, 0.48) == 0.0
    assert at(triplet, 0.5) == Burst((25.0, 25.0, 25.0), 0.005)


# -- EMG-triggered ------------------------------------------------------------------------------------------------


def emg(**kw) -> EMGTriggered:
    params = {"on_pct": 20.0, "off_pct": 10.0, "refractory_s": 0.0, "amplitude_ma": 15.0, "hold_s": 0.3}
    return EMGTriggered(**{**params, **kw})


def test_emg_triggered_hysteresis():
    c = emg()
    efforts = [25, 25, 25, 15, 25, 15, 25, 5, 25, 25]
    out = run_efforts(c, efforts, 0.1)
    # pattern 0..0.3 s; effort stays between off and on: no retrigger; falls below off: the next crossing triggers
    assert out == [15, 15, 15, 0, 0, 0, 0, 0, 15, 15]
    assert c.n_triggers == 2


def test_emg_triggered_pattern_finishes_regardless_of_effort_and_ramps():
    c = emg(hold_s=0.2, ramp_up_s=0.2, ramp_down_s=0.2)
    out = run_efforts(c, [30, NAN, 0, -5, INF, 0, 0, 0], 0.1)
    assert out == pytest.approx([0.0, 7.5, 15.0, 15.0, 15.0, 7.5, 0.0, 0.0])
    assert c.n_triggers == 1


def test_emg_triggered_refractory_ignores_a_crossing_inside_it():
    c = emg(refractory_s=1.0, hold_s=0.5)
    # t: 0 trigger; 0.1-0.4 pattern (relaxed); 0.5-0.9 relaxed; 1.0 crossing inside the refractory time (ends
    # 1.5 s) -> ignored, and the contraction held past 1.5 s does not trigger late; 2.0 relax; 2.1 cross -> trigger
    efforts = [25] + [0] * 4 + [5] * 5 + [25] * 10 + [5, 25, 25]
    out = run_efforts(c, efforts, 0.1)
    pulses = [k for k, a in enumerate(out) if a > 0]
    assert pulses == [0, 1, 2, 3, 4, 21, 22]
    assert c.n_triggers == 2 and c.n_ignored == 1


def test_emg_triggered_crossing_after_refractory_triggers():
    c = emg(refractory_s=1.0, hold_s=0.5)
    efforts = [25] + [5] * 15 + [12, 25]  # relaxed through the refractory time; a smooth rise after it
    out = run_efforts(c, efforts, 0.1)
    assert [k for k, a in enumerate(out) if a > 0] == [0, 1, 2, 3, 4, 17]
    assert c.n_ignored == 0


def test_emg_triggered_nan_never_triggers_nor_rearms():
    c = emg()
    assert run_efforts(c, [NAN, INF, NAN], 0.1) == [0, 0, 0] and c.n_triggers == 0
    c.reset()
    efforts = [25, 25, 25] + [NAN] * 3 + [25, NAN, 5, 25]
    out = run_efforts(c, efforts, 0.1)
    assert [k for k, a in enumerate(out) if a > 0] == [0, 1, 2, 9]  # NaN is not "below off_pct"
    c.reset()
    assert c.n_triggers == 0 and run_efforts(c, [25], 0.1) == [15.0]


# -- proportional ---------------------------------------------------------------------------------------------------


def test_proportional_assist():
    c = ProportionalAssist(gain_ma_per_pct=0.5, deadband_pct=5.0, offset_ma=8.0, max_ma=20.0)
    assert at(c, 0, effort=4.0) == 0.0
    assert at(c, 0, effort=5.0) == 0.0
    assert at(c, 0, effort=15.0) == 13.0
    assert at(c, 0, effort=100.0) == 20.0
    assert at(c, 0, effort=NAN) == 0.0 and at(c, 0, effort=INF) == 0.0


# -- PID --------------------------------------------------------------------------------------------------------


def test_pid_p_only_step_response():
    c = PID(kp=0.5, bias_ma=2.0, setpoint=30.0)
    assert at(c, 0.0, effort=10.0) == 0.5 * 20 + 2.0
    assert at(c, 0.02, effort=26.0) == 0.5 * 4 + 2.0
    assert at(c, 0.04, effort=40.0) == 0.0  # kp * e + bias = -3 -> min_ma


def test_pid_pi_exact_integral():
    c = PID(kp=0.5, ki=2.0, setpoint=10.0)
    out = [at(c, k * 0.02, effort=5.0) for k in range(10)]
    assert out[0] == pytest.approx(2.5 + 2.0 * 5.0 * 0.02)  # the integral includes the current error
    assert c.integral_ma == pytest.approx(2.0 * 5.0 * 0.02 * 10)
    assert out[-1] == pytest.approx(2.5 + 2.0)


def test_pid_derivative_on_measurement_no_setpoint_kick():
    c = PID(kp=1.0, kd=0.1, bias_ma=10.0, setpoint_times_s=(0.1, 0.1), setpoint_values=(10.0, 12.0))
    assert at(c, 0.0, effort=10.0) == 10.0
    assert at(c, 0.1, effort=10.0) == pytest.approx(12.0)  # set-point step: P only (on error: +kd*2/0.02 = +10)
    # measurement step 10 -> 11 in one period: D = -kd * 1 / 0.02 = -5; P = 1
    assert at(c, 0.2, effort=11.0) == pytest.approx(10.0 + 1.0 - 5.0)
    assert at(c, 0.3, effort=11.0) == pytest.approx(11.0)


def test_pid_derivative_filter():
    # tau = 0.06 s, dt = 0.02 s: alpha = 0.02 / 0.08 = 0.25; raw derivative of -m: +50 then 0
    c = PID(kp=0.0, kd=0.1, bias_ma=10.0, derivative_tau_s=0.06)
    out = [at(c, k * 0.02, effort=m) for k, m in enumerate([10.0, 9.0, 9.0, 9.0])]
    assert out == pytest.approx([10.0, 10.0 + 0.1 * 12.5, 10.0 + 0.1 * 9.375, 10.0 + 0.1 * 7.03125])
    raw = PID(kp=0.0, kd=0.1, bias_ma=10.0)
    assert [at(raw, k * 0.02, effort=m) for k, m in enumerate([10.0, 9.0, 9.0])] == pytest.approx([10, 15, 10])


def test_pid_anti_windup_leaves_saturation_within_one_step():
    c = PID(kp=1.0, ki=1.0, bias_ma=10.0, max_ma=30.0, setpoint=50.0)
    n = 1000
    for k in range(n):
        assert at(c, k * 0.02, effort=10.0) == 30.0  # P alone (40) saturates
    assert c.integral_ma == 0.0  # no integration while saturated and pushing further
    naive_integral = 1.0 * 40.0 * 0.02 * n  # 800 mA: a naive integrator would stay saturated for ~20000 steps
    assert 10.0 - 2.0 + naive_integral > 30.0
    out = at(c, n * 0.02, effort=52.0)  # error changes sign: e = -2
    assert out == pytest.approx(10.0 - 2.0 - 2.0 * 0.02)


def test_pid_integral_clamped_to_output_range():
    c = PID(kp=0.0, ki=10.0, max_ma=30.0, setpoint=50.0)  # +8 mA of integral per step
    out = [at(c, k * 0.02, effort=10.0) for k in range(6)]
    assert out == pytest.approx([8.0, 16.0, 24.0, 30.0, 30.0, 30.0])
    assert c.integral_ma == 30.0  # clamped to max_ma - bias_ma, not 32


def test_pid_setpoint_trajectory_and_force_measurement():
    c = PID(
        kp=1.0, measurement="force_n", setpoint=99.0, setpoint_times_s=(1.0, 2.0, 4.0), setpoint_values=(0.0, 10.0, 2.0)
    )
    expected = {0.0: 0.0, 1.0: 0.0, 1.5: 5.0, 2.0: 10.0, 3.0: 6.0, 4.0: 2.0, 9.0: 2.0}
    for t, sp in expected.items():
        assert c.setpoint_at(t) == pytest.approx(sp)
        assert c.step(est(effort=1000.0), ctx(t, force=0.0)) == pytest.approx(sp)  # effort is ignored
    assert c.step(est(effort=5.0), ctx(5.0, force=NAN)) == 0.0


def test_pid_nan_measurement_leaves_state_unchanged():
    params = {"kp": 0.8, "ki": 1.5, "kd": 0.05, "derivative_tau_s": 0.04, "bias_ma": 3.0, "setpoint": 20.0}
    a, b = PID(**params), PID(**params)
    efforts = [5.0, 8.0, 12.0, 15.0, 17.0, 19.0, 21.0]
    out_a = [at(a, k * 0.02, effort=e) for k, e in enumerate(efforts[:3])]
    out_b = [at(b, k * 0.02, effort=e) for k, e in enumerate(efforts[:3])]
    assert out_a == out_b
    assert at(b, 0.06, effort=NAN) == 0.0 and at(b, 0.06, effort=INF) == 0.0
    assert b.integral_ma == a.integral_ma
    rest_a = [at(a, (k + 3) * 0.02, effort=e) for k, e in enumerate(efforts[3:])]
    rest_b = [at(b, (k + 3) * 0.02, effort=e) for k, e in enumerate(efforts[3:])]
    assert rest_a == rest_b


def test_pid_min_on_and_reset():
    c = PID(kp=1.0, min_on_ma=5.0, setpoint_times_s=(0.0, 1.0), setpoint_values=(4.0, 6.0))
    assert at(c, 0.0, effort=0.0) == 0.0  # 4 mA is below min_on_ma
    assert at(c, 1.0, effort=0.0) == 6.0
    c = PID(kp=0.0, ki=1.0, setpoint=10.0)
    at(c, 0.0, effort=0.0)
    c.reset()
    assert c.integral_ma == 0.0


# -- fatigue compensation -------------------------------------------------------------------------------------------


def run_fc(fc: FatigueCompensation, n: int, plant, period: float = 0.04) -> list:
    """Step ``n`` times; estimate k carries the delivered amplitude and the M-wave ``plant(k - 1, amp)`` of the
    pulse commanded at step k - 1 (none after a Burst or 0 mA)."""
    outs, prev = [], 0.0
    for k in range(n):
        if isinstance(prev, Burst) or prev == 0:
            e = est(index=k)
        else:
            e = est(index=k, amp=prev, mwave=plant(k - 1, prev))
        prev = fc.step(e, ctx(k * period, period))
        outs.append(prev)
    return outs


def test_fatigue_boost_grows_with_a_20_percent_decline_and_is_bounded():
    fc = FatigueCompensation(Constant(20.0), max_boost_ma=3.0, gain_ma=0.5, reference_pulses=5)
    out = run_fc(fc, 60, lambda j, a: 1000.0 if j < 5 else 800.0)  # plant does not respond to the boost
    assert out[:6] == [20.0] * 6  # pulses 0-4 form the reference; estimate 5 carries the 5th reference M-wave
    assert out[6] == pytest.approx(20.1)  # 0.5 * (1 - 800 / 1000)
    assert out[15] == pytest.approx(21.0)
    assert max(out) == 23.0 and out[-1] == 23.0 and fc.boost_ma == 3.0
    assert fc.references_uv == {20.0: 1000.0}


def test_fatigue_boost_restores_the_response_of_a_recruiting_plant():
    # M-wave proportional to the delivered current; from pulse 10 on, fatigue lowers it by up to 20 % over 200
    # pulses: 800 * (20 + b) / 20 = 1000 -> b = 5 mA holds the response
    def plant(j, a):
        return 1000.0 * (1.0 - 0.2 * min(max(j - 10, 0) / 200, 1.0)) * a / 20.0

    fc = FatigueCompensation(Constant(20.0), max_boost_ma=10.0, gain_ma=0.5)
    out = run_fc(fc, 1500, plant)
    assert np.all(np.diff(out) >= -1e-12)  # the boost only grows while the muscle tires
    assert fc.boost_ma == pytest.approx(5.0, abs=1e-3)
    capped = FatigueCompensation(Constant(20.0), max_boost_ma=3.0, gain_ma=0.5)
    assert max(run_fc(capped, 1500, plant)) == 23.0


def test_fatigue_reference_per_level():
    inner = Sequence([10.04, 19.98] * 1000)  # rounded to 0.1 mA: levels 10.0 and 20.0
    fc = FatigueCompensation(inner, max_boost_ma=5.0, gain_ma=0.5)
    out = run_fc(fc, 60, lambda j, a: 50.0 * a)  # no fatigue: 500 uV at 10 mA, 1000 uV at 20 mA
    assert fc.references_uv == pytest.approx({10.0: 50.0 * 10.04, 20.0: 50.0 * 19.98})
    assert fc.boost_ma == 0.0 and out[-2:] == [10.04, 19.98]  # one pooled reference would make it oscillate
    run_fc(fc, 11, lambda j, a: 40.0 * a)  # 20 % lower at both levels (steps restart at index 0)
    assert fc.boost_ma > 0


def test_fatigue_passes_bursts_with_the_boost():
    inner = Sequence([20.0] * 12 + [Burst((20.0, 0.0, 20.0), 0.01), 0.0, 20.0])
    fc = FatigueCompensation(inner, max_boost_ma=5.0, gain_ma=0.5)
    out = run_fc(fc, 15, lambda j, a: 1000.0 if j < 5 else (800.0 if j < 12 else 100.0))
    assert fc.n_updates == 7 and fc.boost_ma == pytest.approx(0.7)  # M-waves of pulses 5..11; none after the burst
    assert out[12] == Burst((20.7, 0.0, 20.7), 0.01)
    assert out[13] == 0.0 and out[14] == pytest.approx(20.7)


def test_fatigue_ignores_pulses_held_down_by_safety_small_responses_and_repeated_estimates():
    fc = FatigueCompensation(Constant(20.0), max_boost_ma=5.0, gain_ma=0.5)
    delivered = [5.0, 10.0, 15.0] + [20.0] * 20  # the safety layer's ramp limit at the start
    for k in range(1, len(delivered)):
        fc.step(est(index=k, amp=delivered[k - 1], mwave=50.0 * delivered[k - 1]), ctx(k * 0.04, 0.04))
    assert fc.references_uv == {20.0: 1000.0} and fc.boost_ma == 0.0
    n = fc.n_updates
    assert fc.step(est(index=999, amp=20.0, mwave=800.0), ctx(1.0, 0.04)) == pytest.approx(20.1)
    fc.step(est(index=999, amp=20.0, mwave=800.0), ctx(1.04, 0.04))  # the same estimate again
    fc.step(est(index=1000, amp=20.1, mwave=20.0), ctx(1.08, 0.04))  # below min_response_uv
    fc.step(est(index=1001, amp=NAN, mwave=800.0), ctx(1.12, 0.04))  # no pulse delivered
    assert fc.n_updates == n + 1 and fc.boost_ma == pytest.approx(0.1)


def test_fatigue_reset_resets_inner():
    inner = PulseSchedule((0.0,), 20.0, n_pulses=1)
    fc = FatigueCompensation(inner, max_boost_ma=5.0)
    assert fc.step(est(), ctx(0.0)) == 20.0 and inner.done
    fc.reset()
    assert not inner.done and fc.boost_ma == 0.0 and fc.references_uv == {}


# -- validation -----------------------------------------------------------------------------------------------------

EMG_OK = {"on_pct": 20.0, "off_pct": 10.0, "refractory_s": 1.0, "amplitude_ma": 15.0, "hold_s": 1.0}
SWEEP_OK = {"start_ma": 2.0, "stop_ma": 10.0, "step_ma": 2.0}


@pytest.mark.parametrize(
    ("cls", "kwargs", "name"),
    [
        (Constant, {"amplitude_ma": -1.0}, "amplitude_ma"),
        (Constant, {"amplitude_ma": NAN}, "amplitude_ma"),
        (Constant, {"amplitude_ma": "5"}, "amplitude_ma"),
        (Ramp, {"start_ma": 0.0, "end_ma": 10.0, "ramp_s": -1.0}, "ramp_s"),
        (Ramp, {"start_ma": 0.0, "end_ma": INF, "ramp_s": 1.0}, "end_ma"),
        (Ramp, {"start_ma": 0.0, "end_ma": 1.0, "ramp_s": 1.0, "delay_s": -0.1}, "delay_s"),
        (Trapezoid, {"amplitude_ma": 10.0, "on_s": 0.0, "off_s": 5.0}, "on_s"),
        (Trapezoid, {"amplitude_ma": 10.0, "on_s": 5.0, "off_s": -5.0}, "off_s"),
        (Trapezoid, {"amplitude_ma": 10.0, "on_s": 5.0, "off_s": 5.0, "cycles": -1}, "cycles"),
        (Trapezoid, {"amplitude_ma": 10.0, "on_s": 5.0, "off_s": 5.0, "cycles": 1.5}, "cycles"),
        (Trapezoid, {"amplitude_ma": 10.0, "on_s": 5.0, "off_s": 5.0, "start_ma": -1.0}, "start_ma"),
        (RecruitmentSweep, {**SWEEP_OK, "stop_ma": 1.0}, "stop_ma"),
        (RecruitmentSweep, {**SWEEP_OK, "step_ma": 0.0}, "step_ma"),
        (RecruitmentSweep, {**SWEEP_OK, "step_ma": 1e-6}, "step_ma"),
        (RecruitmentSweep, {**SWEEP_OK, "direction": "sideways"}, "direction"),
        (RecruitmentSweep, {**SWEEP_OK, "pulses_per_level": 0}, "pulses_per_level"),
        (RecruitmentSweep, {**SWEEP_OK, "every_n_periods": True}, "every_n_periods"),
        (PulseSchedule, {"times_s": (2.0, 1.0), "amplitude_ma": 30.0}, "times_s"),
        (PulseSchedule, {"times_s": (1.0, 1.0), "amplitude_ma": 30.0}, "times_s"),
        (PulseSchedule, {"times_s": (-1.0,), "amplitude_ma": 30.0}, "times_s"),
        (PulseSchedule, {"times_s": (), "amplitude_ma": 30.0}, "times_s"),
        (PulseSchedule, {"times_s": (1.0,), "amplitude_ma": 30.0, "interval_ms": 0.0}, "interval_ms"),
        (PulseSchedule, {"times_s": (1.0,), "amplitude_ma": 30.0, "interval_ms": 0.05}, "interval_ms"),
        (PulseSchedule, {"times_s": (1.0,), "amplitude_ma": 30.0, "interval_ms": 1500.0}, "interval_ms"),
        (PulseSchedule, {"times_s": (1.0,), "amplitude_ma": 30.0, "n_pulses": 0}, "n_pulses"),
        (EMGTriggered, {**EMG_OK, "off_pct": 20.0}, "off_pct"),
        (EMGTriggered, {**EMG_OK, "on_pct": 0.0, "off_pct": 0.0}, "on_pct"),
        (EMGTriggered, {**EMG_OK, "refractory_s": -1.0}, "refractory_s"),
        (EMGTriggered, {**EMG_OK, "hold_s": 0.0}, "hold_s"),
        (EMGTriggered, {**EMG_OK, "amplitude_ma": NAN}, "amplitude_ma"),
        (ProportionalAssist, {"gain_ma_per_pct": -1.0}, "gain_ma_per_pct"),
        (PID, {"kp": NAN}, "kp"),
        (PID, {"kp": 1.0, "ki": INF}, "ki"),
        (PID, {"kp": 1.0, "measurement": "torque"}, "measurement"),
        (PID, {"kp": 1.0, "min_ma": 10.0, "max_ma": 5.0, "bias_ma": 10.0}, "max_ma"),
        (PID, {"kp": 1.0, "bias_ma": 40.0}, "bias_ma"),
        (PID, {"kp": 1.0, "setpoint_times_s": (0.0, 1.0), "setpoint_values": (1.0,)}, "setpoint_values"),
        (PID, {"kp": 1.0, "setpoint_times_s": (1.0, 0.0), "setpoint_values": (1.0, 2.0)}, "setpoint_times_s"),
        (PID, {"kp": 1.0, "setpoint_times_s": (0.0,), "setpoint_values": (NAN,)}, "setpoint_values"),
        (PID, {"kp": 1.0, "derivative_tau_s": -0.1}, "derivative_tau_s"),
        (PID, {"kp": 1.0, "min_on_ma": 50.0}, "min_on_ma"),
        (FatigueCompensation, {"inner": 5.0, "max_boost_ma": 5.0}, "inner"),
        (FatigueCompensation, {"inner": Constant(1.0), "max_boost_ma": -5.0}, "max_boost_ma"),
        (FatigueCompensation, {"inner": Constant(1.0), "max_boost_ma": 5.0, "gain_ma": -1.0}, "gain_ma"),
        (FatigueCompensation, {"inner": Constant(1.0), "max_boost_ma": 5.0, "reference_pulses": 0}, "reference_pulses"),
        (FatigueCompensation, {"inner": Constant(1.0), "max_boost_ma": 5.0, "min_response_uv": NAN}, "min_response_uv"),
        (
            FatigueCompensation,
            {"inner": Constant(1.0), "max_boost_ma": 5.0, "amplitude_tolerance_ma": -1.0},
            "amplitude_tolerance_ma",
        ),
    ],
)
def test_invalid_parameters_raise_config_error_naming_the_field(cls, kwargs, name):
    with pytest.raises(ConfigError, match=rf"^{cls.__name__} {name} = .*: must "):
        cls(**kwargs)


def test_recruitment_sweep_duration_needs_a_period():
    with pytest.raises(ConfigError, match="period_s"):
        RecruitmentSweep(**SWEEP_OK).duration_s(0.0)


# -- property: outputs are always valid pulses -------------------------------------------------------------------

amps = st.floats(0.0, 100.0)
durations = st.floats(0.0, 3.0)
# typical values most of the time, anything (NaN, +-inf, huge, negative) otherwise
measured = st.one_of(st.floats(-10.0, 2000.0), st.floats(), st.sampled_from([NAN, INF, -INF, -1e300, 1e300]))


@st.composite
def controller_and_max(draw, wrapper: bool = True):
    """A controller with random valid parameters, and the largest amplitude it may return (mA)."""
    kinds = ["constant", "ramp", "trapezoid", "sweep", "schedule", "emg", "proportional", "pid"]
    kind = draw(st.sampled_from([*kinds, "fatigue"] if wrapper else kinds))
    if kind == "constant":
        a = draw(amps)
        return Constant(a), a
    if kind == "ramp":
        s, e = draw(amps), draw(amps)
        return Ramp(s, e, draw(durations), draw(durations)), max(s, e)
    if kind == "trapezoid":
        a, s = draw(amps), draw(amps)
        tz = Trapezoid(
            a,
            on_s=draw(st.floats(0.01, 2.0)),
            off_s=draw(durations),
            ramp_up_s=draw(durations),
            ramp_down_s=draw(durations),
            delay_s=draw(durations),
            cycles=draw(st.integers(0, 3)),
            start_ma=s,
        )
        return tz, max(a, s)
    if kind == "sweep":
        lo, hi = sorted((draw(amps), draw(amps)))
        sweep = RecruitmentSweep(
            lo,
            hi,
            draw(st.floats(0.1, 20.0)),
            pulses_per_level=draw(st.integers(1, 3)),
            every_n_periods=draw(st.integers(1, 4)),
            direction=draw(st.sampled_from(["up", "down", "up_down"])),
        )
        return sweep, hi
    if kind == "schedule":
        times = sorted(draw(st.lists(durations, min_size=1, max_size=5, unique=True)))
        a = draw(amps)
        sched = PulseSchedule(
            tuple(times),
            a,
            n_pulses=draw(st.integers(1, 4)),
            interval_ms=draw(st.floats(0.1, 1000.0)),
        )
        return sched, a
    if kind == "emg":
        off = draw(st.floats(0.0, 50.0))
        a = draw(amps)
        trig = EMGTriggered(
            on_pct=off + draw(st.floats(0.1, 50.0)),
            off_pct=off,
            refractory_s=draw(durations),
            amplitude_ma=a,
            hold_s=draw(st.floats(0.01, 1.0)),
            ramp_up_s=draw(durations),
            ramp_down_s=draw(durations),
        )
        return trig, a
    if kind == "proportional":
        top = draw(amps)
        prop = ProportionalAssist(draw(st.floats(0.0, 10.0)), draw(st.floats(0.0, 50.0)), draw(amps), top)
        return prop, top
    if kind == "pid":
        lo, bias, hi = sorted((draw(amps), draw(amps), draw(amps)))
        gains = st.one_of(st.floats(-100.0, 100.0), st.floats(-1e300, 1e300))
        times = sorted(draw(st.lists(durations, max_size=4)))
        pid = PID(
            kp=draw(gains),
            ki=draw(gains),
            kd=draw(gains),
            measurement=draw(st.sampled_from(["effort_pct_mvc", "force_n"])),
            setpoint=draw(st.floats(-1e3, 1e3)),
            setpoint_times_s=tuple(times),
            setpoint_values=tuple(draw(st.floats(-1e3, 1e3)) for _ in times),
            bias_ma=bias,
            min_ma=lo,
            max_ma=hi,
            derivative_tau_s=draw(st.floats(0.0, 1.0)),
            min_on_ma=draw(st.floats(0.0, hi)),
        )
        return pid, hi
    inner, inner_max = draw(controller_and_max(wrapper=False))
    boost = draw(amps)
    fc = FatigueCompensation(
        inner,
        max_boost_ma=boost,
        gain_ma=draw(st.floats(0.0, 10.0)),
        reference_pulses=draw(st.integers(1, 5)),
        min_response_uv=draw(st.floats(0.0, 1000.0)),
        amplitude_tolerance_ma=draw(st.floats(0.0, 5.0)),
    )
    return fc, inner_max + boost


@settings(max_examples=400, deadline=None)
@given(
    cm=controller_and_max(),
    period=st.floats(1e-3, 0.5),
    stream=st.lists(
        st.tuples(measured, measured, measured, st.sampled_from(["previous", "none", "random"]), measured),
        min_size=1,
        max_size=80,
    ),
)
def test_outputs_are_always_finite_non_negative_and_within_the_controllers_max(cm, period, stream):
    controller, top = cm
    previous = 0.0
    for k, (effort, mwave, force, amp_kind, amp_random) in enumerate(stream):
        first = previous.amplitudes_ma[0] if isinstance(previous, Burst) else previous
        amp = {"previous": first if first > 0 else NAN, "none": NAN, "random": amp_random}[amp_kind]
        out = controller.step(est(effort, mwave, amp, index=k), ctx(k * period, period, force))
        amplitudes = out.amplitudes_ma if isinstance(out, Burst) else (out,)
        for a in amplitudes:
            assert isinstance(a, float)
            assert math.isfinite(a) and 0.0 <= a <= top * (1 + 1e-12) + 1e-12, (a, top)
        previous = out
