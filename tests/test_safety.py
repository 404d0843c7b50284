"""The safety layer under random and adversarial commands: nothing outside the limits is ever delivered."""

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from closedloop.errors import ConfigError, SafetyError
from closedloop.safety import (
    ABSOLUTE_MAX_AMPLITUDE_MA,
    SafePulse,
    SafetyLayer,
    SafetyLimits,
    require_safe,
)
from closedloop.stimulators import SimulatedStimulator
from closedloop.types import Burst, PulseCommand


class RecordingSink:
    """Stands in for the participant: records what physically arrives."""

    def __init__(self):
        self.pulses = []

    def schedule_pulse(self, t, channel, amplitude_ma, pulse_width_us):
        self.pulses.append((t, channel, amplitude_ma, pulse_width_us))


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


adversarial = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.floats(-1e6, 1e6),
    st.sampled_from([0.0, -0.0, 1e-300, 39.999, 40.0, 40.001, 1e308, -1e308]),
)


@st.composite
def limits_st(draw):
    amp = draw(st.floats(1.0, ABSOLUTE_MAX_AMPLITUDE_MA))
    pw = draw(st.floats(50.0, 1000.0))
    per_channel = draw(st.booleans())  # tighter limits on each of the two channels, or none
    return SafetyLimits(
        max_amplitude_ma=amp,
        max_pulse_width_us=pw,
        max_charge_uc=draw(st.floats(1.0, 60.0)),
        max_step_ma=draw(st.floats(0.5, 20.0)),
        max_rate_hz=draw(st.floats(10.0, 200.0)),
        allowed_channels=(0, 1),
        on_violation=draw(st.sampled_from(["clamp", "refuse"])),
        channel_max_amplitude_ma=tuple(draw(st.floats(0.5, amp)) for _ in range(2)) if per_channel else (),
        channel_max_pulse_width_us=tuple(draw(st.floats(10.0, pw)) for _ in range(2)) if per_channel else (),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    limits=limits_st(),
    commands=st.lists(
        st.tuples(adversarial, st.one_of(st.floats(0, 2000), adversarial), st.integers(-2, 3), st.floats(0.0, 0.05)),
        min_size=1,
        max_size=400,
    ),
)
def test_no_delivered_pulse_ever_exceeds_any_limit(limits, commands):
    sink, clock = RecordingSink(), Clock()
    safety = SafetyLayer(limits, SimulatedStimulator(sink, clock))
    last_amp: dict[int, float] = {}
    last_t: dict[int, float] = {}
    for amp, pw, ch, dt in commands:
        clock.t += dt
        if safety.tripped is not None:
            safety.reset()  # an experimenter re-arms: the limits must still hold afterwards
            safety.stimulator.open()
            last_amp.clear()
            last_t.clear()
        before = len(sink.pulses)
        out = safety.deliver(PulseCommand(clock.t, ch, amp, pw))
        if len(sink.pulses) > before:
            t, c, a, w = sink.pulses[-1]
            assert out is not None and out.amplitude_ma == a
            assert 0 < a <= limits.max_amplitude_ma
            assert 0 < w <= limits.max_pulse_width_us
            i = limits.allowed_channels.index(c)
            if limits.channel_max_amplitude_ma:
                assert a <= limits.channel_max_amplitude_ma[i] and w <= limits.channel_max_pulse_width_us[i]
            assert a * w * 1e-3 <= limits.max_charge_uc * (1 + 1e-12)
            assert c in limits.allowed_channels
            assert a <= last_amp.get(c, 0.0) + limits.max_step_ma + 1e-9
            if c in last_t:
                assert (t - last_t[c]) * limits.max_rate_hz >= 1.0 - 1e-9
            last_amp[c], last_t[c] = a, t
        elif out is None and (not math.isfinite(amp) or not math.isfinite(pw)):
            assert safety.tripped is not None  # a non-finite command turns output off
        if isinstance(amp, float) and amp <= 0 and math.isfinite(amp):
            last_amp[ch] = 0.0


@settings(max_examples=50, deadline=None)
@given(target=st.floats(0.0, 200.0), step=st.floats(0.5, 10.0))
def test_ramp_limit_reaches_a_target_in_steps(target, step):
    limits = SafetyLimits(max_amplitude_ma=100.0, max_pulse_width_us=100.0, max_charge_uc=60.0, max_step_ma=step)
    sink, clock = RecordingSink(), Clock()
    safety = SafetyLayer(limits, SimulatedStimulator(sink, clock))
    amps = []
    for _ in range(300):
        clock.t += 0.02
        p = safety.deliver(PulseCommand(clock.t, 0, target, 100.0))
        amps.append(0.0 if p is None else p.amplitude_ma)
    expected_final = min(target, 60.0 / 0.1, 100.0)  # charge ceiling 60 uC at 100 us = 600 mA > 100 mA
    if target > 0:
        assert amps[-1] == pytest.approx(min(expected_final, 100.0))
        k = math.ceil(min(target, 100.0) / step)  # pulses to get there, by hand
        assert amps[min(k, 299)] == pytest.approx(min(target, 100.0))
        assert all(b - a <= step + 1e-9 for a, b in zip([0.0, *amps], amps, strict=False))


def test_nan_command_turns_output_off_and_stays_off_until_reset():
    sink, clock = RecordingSink(), Clock()
    stim = SimulatedStimulator(sink, clock)
    safety = SafetyLayer(SafetyLimits(), stim)
    assert safety.deliver(PulseCommand(0.0, 0, 3.0, 200.0)) is not None
    assert safety.deliver(PulseCommand(0.02, 0, math.nan, 200.0)) is None
    assert stim.stopped and safety.tripped and "non-finite" in safety.tripped
    assert safety.deliver(PulseCommand(0.04, 0, 3.0, 200.0)) is None
    assert len(sink.pulses) == 1
    assert [e.kind for e in safety.events] == ["output_off"]
    safety.reset()
    stim.open()
    assert safety.deliver(PulseCommand(0.06, 0, 3.0, 200.0)) is not None


def test_safe_pulses_cannot_be_forged_and_drivers_refuse_raw_commands():
    with pytest.raises(SafetyError):
        SafePulse(0.0, 0, 1.0, 100.0, PulseCommand(0.0, 0, 1.0, 100.0))
    stim = SimulatedStimulator(RecordingSink(), Clock())
    with pytest.raises(SafetyError, match="not checked by the safety layer"):
        stim.deliver(PulseCommand(0.0, 0, 1.0, 100.0))
    with pytest.raises(SafetyError):
        require_safe(object())


def test_a_failing_driver_turns_output_off():
    class Broken:
        stopped = False

        def open(self):
            pass

        def deliver(self, pulse):
            raise OSError("serial port gone")

        def stop(self):
            self.stopped = True

        def close(self):
            pass

    b = Broken()
    safety = SafetyLayer(SafetyLimits(), b)
    with pytest.raises(SafetyError, match="serial port gone"):
        safety.deliver(PulseCommand(0.0, 0, 1.0, 100.0))
    assert b.stopped and safety.tripped


def test_stopped_stimulator_refuses_and_the_layer_stays_off():
    stim = SimulatedStimulator(RecordingSink(), Clock())
    safety = SafetyLayer(SafetyLimits(), stim)
    stim.stop()
    with pytest.raises(SafetyError, match="stopped"):
        safety.deliver(PulseCommand(0.0, 0, 1.0, 100.0))
    assert safety.tripped is not None and safety.events[-1].kind == "output_off"
    assert safety.check(PulseCommand(1.0, 0, 1.0, 100.0)) is None


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"max_amplitude_ma": 150.0}, "max_amplitude_ma"),
        ({"max_amplitude_ma": math.nan}, "max_amplitude_ma"),
        ({"max_pulse_width_us": 5000.0}, "max_pulse_width_us"),
        ({"max_charge_uc": 0.0}, "max_charge_uc"),
        ({"max_rate_hz": 1000.0}, "max_rate_hz"),
        ({"on_violation": "ignore"}, "on_violation"),
        ({"allowed_channels": ()}, "allowed_channels"),
        ({"channel_max_amplitude_ma": (10.0,)}, "channel_max_amplitude_ma"),  # 8 allowed channels, 1 value
        ({"allowed_channels": (0,), "channel_max_amplitude_ma": (50.0,)}, "channel_max_amplitude_ma"),
        ({"allowed_channels": (0,), "channel_max_pulse_width_us": (0.0,)}, "channel_max_pulse_width_us"),
        ({"ramp_reset_s": -1.0}, "ramp_reset_s"),
    ],
)
def test_limits_above_the_ceilings_are_refused(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        SafetyLimits(**kwargs)


def test_ramp_restarts_after_a_pause_or_a_deliberate_stop_but_not_after_one_skipped_pulse():
    limits = SafetyLimits(max_amplitude_ma=40.0, max_charge_uc=60.0, max_step_ma=5.0, ramp_reset_s=0.25)
    sink, clock = RecordingSink(), Clock()
    safety = SafetyLayer(limits, SimulatedStimulator(sink, clock))

    def pulse(t, amp=30.0):
        clock.t = t
        p = safety.deliver(PulseCommand(t, 0, amp, 200.0))
        return 0.0 if p is None else p.amplitude_ma

    assert [pulse(0.04 * k) for k in range(1, 8)] == [5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 30.0]
    assert pulse(0.36) == 30.0  # one slot skipped (80 ms gap): no restart
    assert pulse(0.70) == 5.0  # 340 ms pause > ramp_reset_s: from 0 mA again
    assert pulse(0.74) == 10.0
    safety.no_pulse(0)  # the controller asked for 0 mA
    assert pulse(0.78) == 5.0


# -- whole sessions with adversarial controllers ------------------------------------------------------------


def _adversarial_session(ctrl, limits, stim_hz: float, seconds: float, seed: int):
    """``ctrl`` through a whole session on the simulated participant; returns it and the result."""
    import asyncio
    import tempfile

    from acquisition.simulator.muscle import MuscleParams
    from acquisition.simulator.profiles import named_profile
    from acquisition.simulator.source import SimulatedParticipant
    from closedloop.estimation.interval import EstimatorConfig, IntervalEstimator
    from closedloop.pipeline import Phase, Session, SessionConfig

    sim = SimulatedParticipant(
        MuscleParams(seed=seed, n_channels=1), named_profile("constant:0.3"), duration_s=seconds + 1.0
    )
    safety = SafetyLayer(limits, sim.stimulator)
    with tempfile.TemporaryDirectory() as tmp:
        session = Session(
            sim,
            lambda info: IntervalEstimator(info, EstimatorConfig(mvc_uv=400.0, method="post")),
            ctrl,
            safety,
            SessionConfig(
                stim_hz=stim_hz,
                pulse_width_us=limits.max_pulse_width_us,
                phases=(Phase("go", seconds, "control"),),
                nan_tolerance_s=None,
            ),
            tmp,
        )
        res = asyncio.run(session.run())
    return sim, res


def _assert_applied_within_limits(applied, limits) -> None:
    """What reached the muscle: amplitude, pulse width, charge, ramp and rate limits all hold."""
    max_amp, max_pw = limits.for_channel(0)
    prev_t, prev_a = -1.0, 0.0
    for p in applied:
        assert 0 < p.amplitude_ma <= max_amp and 0 < p.pulse_width_us <= max_pw
        assert p.charge_uc <= limits.max_charge_uc * (1 + 1e-12)
        base = prev_a if p.t - prev_t <= limits.ramp_reset_s else 0.0
        assert p.amplitude_ma <= base + limits.max_step_ma + 1e-9
        if prev_t >= 0:
            assert (p.t - prev_t) * limits.max_rate_hz >= 1.0 - 1e-9
        prev_t, prev_a = p.t, p.amplitude_ma


class Adversary:
    """Replays a drawn list of outputs, then maybe fails the way a buggy controller does."""

    def __init__(self, outputs, failure):
        self.outputs, self.failure, self.n = outputs, failure, 0

    def step(self, est, ctx=None):
        self.n += 1
        if self.n > len(self.outputs):
            if self.failure == "raise":
                raise RuntimeError("adversary")
            if self.failure is not None:
                return self.failure
            return self.outputs[self.n % len(self.outputs)]
        return self.outputs[self.n - 1]

    def reset(self):
        pass


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    outputs=st.lists(
        st.one_of(st.floats(-1e9, 1e9), st.sampled_from([0.0, 1e-9, 39.9, 40.0, 1e300, -1e300]), st.floats(0, 60)),
        min_size=50,
        max_size=400,
    ),
    failure=st.sampled_from([None, None, "raise", math.nan, math.inf, -math.inf]),
    limits=limits_st(),
)
def test_adversarial_controllers_never_get_an_unsafe_pulse_through_a_session(outputs, failure, limits):
    """Thousands of pulses through the real orchestrator: what reaches the participant respects every limit,
    the ramp holds, and nothing follows a controller failure."""
    ctrl = Adversary(outputs, failure)
    sim, res = _adversarial_session(ctrl, limits, min(50.0, limits.max_rate_hz), 12.0, seed=0)
    applied = sim.applied_pulses
    _assert_applied_within_limits(applied, limits)
    if failure is not None and ctrl.n > len(outputs):
        assert res.status == "faulted" and sim.stimulator.stopped
        assert len(applied) <= len(outputs)  # nothing after the failure


burst_st = st.builds(
    lambda amps, ms: Burst(tuple(amps), ms / 1e3),
    st.lists(
        st.one_of(st.floats(-1e3, 1e3), st.sampled_from([0.0, 45.0, 1e300, math.nan, math.inf])), min_size=1, max_size=6
    ),
    st.floats(0.5, 60.0),
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    outputs=st.lists(st.one_of(burst_st, st.floats(0, 60)), min_size=20, max_size=200),
    limits=limits_st(),
)
def test_adversarial_bursts_never_get_an_unsafe_pulse_through_a_session(outputs, limits):
    """Controllers returning bursts (doublets and worse: NaN, inf, negative, huge, too long, too fast): every
    pulse of a burst is checked on its own; nothing unsafe reaches the participant; a burst that is not finite
    or does not fit in a pulse period turns output off."""
    stim_hz = min(25.0, limits.max_rate_hz)
    ctrl = Adversary(outputs, None)
    sim, res = _adversarial_session(ctrl, limits, stim_hz, 8.0, seed=1)
    _assert_applied_within_limits(sim.applied_pulses, limits)
    bad = [
        o
        for o in outputs
        if isinstance(o, Burst)
        and (
            not all(math.isfinite(a) for a in o.amplitudes_ma)
            or (len(o.amplitudes_ma) - 1) * o.interval_s >= 1 / stim_hz
        )
    ]
    if bad and ctrl.n > outputs.index(bad[0]):
        assert res.status == "faulted" and sim.stimulator.stopped
        assert "controller" in res.error
