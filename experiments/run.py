"""``closedloop run PROTOCOL.toml``: a protocol file becomes a recorded session and a report.

Live, the EMG comes from the LSL stream named in ``[source]`` and pulses go to the stimulator of
``[stimulation]`` (an LSL command stream, or a Hasomed RehaStim 2 on a serial port). With ``--simulate``
the simulated participant takes the place of both, in this process: it does what each phase's
``simulate_drive`` says, and its true parameters go into summary.json under ``simulation`` so that the
report can put the simulator's truth beside every result (``results`` and ``truth`` in summary.json).
``--fast`` runs the simulation in virtual time (as fast as the pipeline goes) instead of real time.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from closedloop.errors import ConfigError
from closedloop.estimation.interval import IntervalEstimator
from closedloop.pipeline import Session, SessionConfig, SessionResult
from closedloop.safety import SafetyLayer
from experiments._console import Progress, run_interactive
from experiments.protocol import Protocol, ProtocolPhase

__all__ = ["phase_drive_profile", "run_protocol", "simulated_muscle_params"]

#: Drive transitions of the simulated participant between phases take this long (s), like a person's.
DRIVE_RAMP_S = 0.3


def simulated_muscle_params(proto: Protocol):
    """The simulated participant's :class:`~acquisition.simulator.muscle.MuscleParams` for ``proto``."""
    from acquisition.simulator.muscle import MuscleParams

    sim = proto.simulation
    kw = dict(sim.muscle)
    for key in ("channel_gains", "emg_band_hz"):
        if isinstance(kw.get(key), list):
            kw[key] = tuple(kw[key])
    return MuscleParams(n_channels=sim.channels, rate_hz=sim.rate_hz, seed=sim.seed, **kw)


def _phase_level(ph: ProtocolPhase, va: float) -> float | str:
    d = ph.simulate_drive
    if d is None:
        return va if ph.mode == "calibrate" else 0.0
    if d == "mvc":
        return va
    if d == "rest":
        return 0.0
    return d


def phase_drive_profile(phases: tuple[ProtocolPhase, ...], voluntary_activation: float):
    """The simulated participant's drive over a protocol: each phase's ``simulate_drive`` in turn.

    A constant level is reached ``DRIVE_RAMP_S`` (at most a quarter of the phase) after the phase begins,
    ramping from the level before; a named profile (``trapezoids``, ``constant:LEVEL``) starts with the phase.
    """
    from acquisition.simulator.profiles import DriveProfile, named_profile

    times: list[float] = [0.0]
    levels: list[float] = [0.0]
    t0 = 0.0
    for ph in phases:
        t1 = t0 + ph.duration_s
        level = _phase_level(ph, voluntary_activation)
        if isinstance(level, str):
            prof = named_profile(level)
            inner = [t for t in prof.times_s if 0.0 < t < ph.duration_s]
            pts = [0.0, *inner, ph.duration_s]
            vals = prof(np.asarray(pts))
            times += [t0 + t for t in pts]
            levels += [float(v) for v in vals]
        else:
            ramp = min(DRIVE_RAMP_S, ph.duration_s / 4)
            times += [t0 + ramp, t1]
            levels += [float(level), float(level)]
        t0 = t1
    times.append(t0 + 1.0)
    levels.append(0.0)
    # strictly piecewise-linear: drop repeated times keeping the last value
    t = np.asarray(times)
    keep = np.append(np.diff(t) > 0, True)
    return DriveProfile(tuple(t[keep]), tuple(np.asarray(levels)[keep]), "phases")


def _simulated(proto: Protocol, fast: bool):
    """The simulated participant (source, stimulator, aux sources) and what summary.json says of it."""
    from acquisition.simulator.profiles import named_profile
    from acquisition.simulator.source import SimulatedParticipant

    sim = proto.simulation
    params = simulated_muscle_params(proto)
    if sim.profile == "phases":
        profile = phase_drive_profile(proto.protocol_phases, sim.voluntary_activation)
    else:
        profile = named_profile(sim.profile)
    participant = SimulatedParticipant(
        params,
        profile,
        chunk_size=sim.chunk,
        duration_s=proto.duration_s + 1.0,
        realtime=not fast,
        wait_for_cue=True,
    )
    info = {
        "muscle": dataclasses.asdict(params),
        "channel_gains": list(participant.muscle._gains),
        "voluntary_activation": sim.voluntary_activation,
        "profile": sim.profile,
        "drive_profile": {"times_s": list(profile.times_s), "levels": list(profile.levels)},
        "virtual_time": fast,
    }
    return participant, participant.stimulator, {"Force": participant.force, "GroundTruth": participant.truth}, info


def _live(proto: Protocol):
    """The LSL EMG source (and force stream) and the stimulator driver of a live session."""
    from acquisition.lsl import LSLSource

    src = proto.source
    if src.loopback:
        from closedloop.lslconfig import use_loopback

        use_loopback()
    source = LSLSource(
        name=src.name,
        type=src.type,
        source_id=src.source_id,
        expected_channels=src.channels,
        expected_rate_hz=src.rate_hz,
        stall_timeout_s=src.stall_timeout_s,
        resolve_timeout_s=src.resolve_timeout_s,
        default_unit=src.units,
    )
    aux = {}
    if src.force_stream:
        aux["Force"] = LSLSource(
            name=src.force_stream, stall_timeout_s=src.stall_timeout_s, resolve_timeout_s=src.resolve_timeout_s
        )
    stim = proto.stimulation
    if stim.stimulator == "lsl":
        from closedloop.stimulators import LSLStimulator

        driver = LSLStimulator(name=stim.command_stream)
    elif stim.stimulator == "sciencemode":
        from closedloop.drivers.sciencemode import ScienceModeStimulator

        driver = ScienceModeStimulator(stim.port, channels=(stim.channel,))
    else:
        raise ConfigError(
            f"{proto.path}: [stimulation] stimulator = 'simulated' needs --simulate (there is no participant to "
            "stimulate otherwise)"
        )
    return source, driver, aux


def run_protocol(
    proto: Protocol,
    out_dir: str | Path,
    *,
    simulate: bool = False,
    fast: bool = False,
    progress: bool = True,
    report: bool | None = None,
    mqtt=None,
    wait_for_start: bool | None = None,
) -> SessionResult:
    """Run ``proto`` and record it in ``out_dir``; write the report unless ``[output] report = false``.

    ``mqtt``: a :class:`closedloop.mqtt.MQTTConfig` (default: the protocol's ``[mqtt]``, if it names a
    broker); ``wait_for_start``: begin the phases on an MQTT ``start`` command (default: ``[mqtt]``'s)."""
    out = Path(out_dir)
    if (out / "session.xdf").exists():
        raise ConfigError(f"{out} already holds a session; choose another --out")
    main = proto.make_controller()
    named = proto.make_phase_controllers()
    sim_info = None
    if simulate:
        source, driver, aux, sim_info = _simulated(proto, fast)
        on_start = source.cue
    else:
        source, driver, aux = _live(proto)
        on_start = None
    s = proto.safety
    safety = SafetyLayer(proto.safety_limits(), driver)
    config = SessionConfig(
        stim_hz=proto.stimulation.rate_hz,
        pulse_width_us=proto.stimulation.pulse_width_us,
        stim_channel=proto.stimulation.channel,
        phases=proto.phases,
        deadline_s=s.deadline_ms / 1e3,
        deadline_policy=s.deadline_policy,
        nonfinite_policy=s.nonfinite_policy,
    )
    extra = {
        "protocol": {
            "name": proto.name,
            "description": proto.description,
            "file": str(proto.path) if proto.path else None,
            "analysis": dataclasses.asdict(proto.analysis),
            "phases": [dataclasses.asdict(p) for p in proto.protocol_phases],
            "raw": proto.raw,
        }
    }
    if sim_info is not None:
        extra["simulation"] = sim_info
    mqtt = mqtt if mqtt is not None else proto.mqtt_config()
    wait = proto.wait_for_start if wait_for_start is None else wait_for_start
    if wait and mqtt is None:
        raise ConfigError("wait_for_start needs MQTT (the start command comes over it): give --mqtt URL")
    out.mkdir(parents=True, exist_ok=True)
    bar = Progress(proto.duration_s, progress, {p.name: p.instruction for p in proto.protocol_phases})
    observers = []
    bridge = None
    if mqtt is not None:
        from closedloop.mqtt import MQTTBridge

        bridge = MQTTBridge(mqtt)
        observers.append(bridge)
        extra["mqtt"] = {"url": mqtt.redacted_url, "prefix": mqtt.prefix}
    session = Session(
        source,
        lambda info: IntervalEstimator(info, proto.estimator),
        main,
        safety,
        config,
        out,
        aux_sources=aux,
        progress=bar,
        on_start=on_start,
        extra_summary=extra,
        phase_controllers=named,
        observers=observers,
        wait_for_start=wait,
    )
    if bridge is not None:
        bridge.attach(session)
        bridge.start()
    try:
        result = run_interactive(session, bar, estop=progress and not (simulate and fast))
    finally:
        if bridge is not None:
            bridge.close()
    if (proto.output.report if report is None else report) and (out / "session.xdf").exists():
        from closedloop.report import build_report

        build_report(out)
        result.summary = json.loads((out / "summary.json").read_text())
    return result
