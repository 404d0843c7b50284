"""``closedloop demo``: an assisted-contraction session on the simulated participant over real LSL.

The participant runs as its own process (``closedloop simulate``), publishing EMG, Force and GroundTruth
outlets and listening to the session's LSL command stream. The session:

    0-1 s   rest
    1-4 s   MVC calibration (the participant contracts maximally; no stimulation)
    4-5 s   rest
    5 s-end assisted contraction: proportional assist on the volitional effort between pulses

The participant's task is aligned with these phases by a cue sent on the command stream at the first EMG
sample. Everything is recorded; the report compares the estimates with the participant's ground truth.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from closedloop.errors import ConfigError, SourceError
from closedloop.estimation.interval import EstimatorConfig, IntervalEstimator, fit_to_pulse_rate
from closedloop.pipeline import Phase, Session, SessionConfig, SessionResult
from closedloop.safety import SafetyLayer, SafetyLimits
from controllers.proportional import ProportionalAssist
from experiments._console import Progress, run_interactive

__all__ = ["DemoConfig", "demo_phases", "run_demo"]

CUE_CHANNEL = -2  # the simulated device's cue code (acquisition.simulator.device.CUE_CHANNEL)


@dataclass(frozen=True)
class DemoConfig:
    """Settings of the demo (the CLI flags)."""

    out_dir: Path
    duration_s: float = 30.0
    channels: int = 4
    rate_hz: float = 2048.0
    stim_hz: float = 25.0
    seed: int = 0
    chunk_size: int = 8
    pulse_width_us: float = 300.0
    report: bool = True
    mqtt_url: str | None = None

    def __post_init__(self) -> None:
        if not 7.0 <= self.duration_s <= 3600.0:
            raise ConfigError(f"--duration {self.duration_s:g}: the demo needs 7..3600 s (5 s of calibration first)")
        if not 1 <= self.channels <= 512:
            raise ConfigError(f"--channels {self.channels}: allowed 1..512")
        if not 500.0 <= self.rate_hz <= 20000.0:
            raise ConfigError(f"--rate {self.rate_hz:g}: allowed 500..20000 Hz")
        if not 5.0 <= self.stim_hz <= 100.0:
            raise ConfigError(f"--stim-hz {self.stim_hz:g}: allowed 5..100 Hz")
        est = EstimatorConfig()
        # the pulse lands up to one chunk into its interval; the volitional EMG starts after the artifact. Below
        # this room the volitional estimate falls apart (measured: effort vs drive r = 0.12 at 100 Hz, 0.93 at 50)
        start = est.post_start if est.method == "post" else est.blank_s
        room = 1.0 / self.stim_hz - self.chunk_size / self.rate_hz - start
        if room < est.min_volitional_s:
            top = 1.0 / (start + est.min_volitional_s + self.chunk_size / self.rate_hz)
            raise ConfigError(
                f"--stim-hz {self.stim_hz:g}: a {1e3 / self.stim_hz:.1f} ms interval leaves less than "
                f"{est.min_volitional_s * 1e3:g} ms of volitional EMG after the artifact ({start * 1e3:g} ms) for "
                f"the {est.method} estimator; use at most {math.floor(top)} Hz"
            )

    @property
    def estimator_config(self) -> EstimatorConfig:
        """The estimator's settings: the defaults, the gain-fit window fitted to the pulse period (a pulse lands
        up to one chunk into its interval; above 50 Hz the default 3-20 ms window would not fit)."""
        return fit_to_pulse_rate(EstimatorConfig(), self.stim_hz, self.chunk_size / self.rate_hz)


def demo_phases(duration_s: float) -> tuple[Phase, ...]:
    """The demo's phases for a session of ``duration_s`` seconds."""
    return (
        Phase("rest", 1.0, "rest"),
        Phase("calibrate", 3.0, "calibrate"),
        Phase("rest", 1.0, "rest"),
        Phase("assist", duration_s - 5.0, "control"),
    )


#: What an operator may change over MQTT during the demo (proportional assist), and within which bounds.
DEMO_SETTABLE = {
    "gain_ma_per_pct": (0.0, 1.0),
    "deadband_pct": (0.0, 30.0),
    "offset_ma": (0.0, 20.0),
    "max_ma": (0.0, 30.0),
}


def _bridge(url: str | None):
    if not url:
        return None
    from closedloop.mqtt import MQTTBridge, MQTTConfig

    return MQTTBridge(MQTTConfig.from_url(url, settable=DEMO_SETTABLE))


def run_demo(cfg: DemoConfig, progress: bool = True) -> SessionResult:
    """Run the demo; returns the session result (summary in ``result.summary``)."""
    from acquisition.lsl import LSLSource
    from closedloop.stimulators import LSLStimulator

    out = Path(cfg.out_dir)
    if (out / "session.xdf").exists():
        raise ConfigError(f"{out} already holds a session; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:10]
    sim_id, stim_id = f"closedloop-demo-sim-{tag}", f"closedloop-demo-stim-{tag}"
    stim = LSLStimulator(name=f"closedloop-demo-stim-{tag}", source_id=stim_id, wait_for_consumer_s=15.0)
    sim_log = open(out / "simulator.log", "w")
    cmd = [
        sys.executable,
        "-m",
        "closedloop",
        "simulate",
        "--channels",
        str(cfg.channels),
        "--rate",
        str(cfg.rate_hz),
        "--chunk",
        str(cfg.chunk_size),
        "--source-id",
        sim_id,
        "--prefix",
        f"demo-{tag}",
        "--command-source-id",
        stim_id,
        "--profile",
        "demo",
        "--wait-for-cue",
        "--seed",
        str(cfg.seed),
        "--duration",
        str(cfg.duration_s + 60.0),
    ]
    proc = subprocess.Popen(cmd, stdout=sim_log, stderr=subprocess.STDOUT)
    try:
        common = dict(expected_channels=cfg.channels, resolve_timeout_s=20.0)
        source = LSLSource(source_id=f"{sim_id}-emg", expected_rate_hz=cfg.rate_hz, stall_timeout_s=1.0, **common)
        aux = {
            "Force": LSLSource(source_id=f"{sim_id}-force", resolve_timeout_s=20.0, stall_timeout_s=2.0),
            "GroundTruth": LSLSource(source_id=f"{sim_id}-truth", resolve_timeout_s=20.0, stall_timeout_s=2.0),
        }
        safety = SafetyLayer(
            SafetyLimits(
                max_amplitude_ma=40.0,
                max_pulse_width_us=400.0,
                max_charge_uc=16.0,
                max_step_ma=5.0,
                max_rate_hz=2 * cfg.stim_hz,
                allowed_channels=(0,),
            ),
            stim,
        )
        controller = ProportionalAssist(gain_ma_per_pct=0.4, deadband_pct=5.0, offset_ma=10.0, max_ma=30.0)
        scfg = SessionConfig(
            stim_hz=cfg.stim_hz, pulse_width_us=cfg.pulse_width_us, stim_channel=0, phases=demo_phases(cfg.duration_s)
        )
        bar = Progress(cfg.duration_s, progress)
        bridge = _bridge(cfg.mqtt_url)
        session = Session(
            source,
            lambda info: IntervalEstimator(info, cfg.estimator_config),
            controller,
            safety,
            scfg,
            out,
            aux_sources=aux,
            progress=bar,
            on_start=lambda t: stim.send_code(CUE_CHANNEL, t),
            extra_summary={"demo": {"simulator": " ".join(cmd[1:]), "seed": cfg.seed}},
            observers=[bridge] if bridge is not None else [],
        )
        if bridge is not None:
            bridge.attach(session)
            bridge.start()
        try:
            result = run_interactive(session, bar, estop=progress)
        finally:
            if bridge is not None:
                bridge.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        sim_log.close()
    if result.status == "faulted" and result.n_intervals == 0 and proc.returncode not in (0, -15):
        raise SourceError(f"the simulated participant failed; see {out / 'simulator.log'}: {result.error}")
    if cfg.report and (out / "session.xdf").exists():
        from closedloop.report import build_report

        build_report(out)  # also adds truth_comparison and fatigue trends to summary.json
        result.summary = json.loads((out / "summary.json").read_text())
    return result
