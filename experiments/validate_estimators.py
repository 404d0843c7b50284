"""Validate the estimators against the simulated participant's ground truth.

    python -m experiments.validate_estimators [--quick] [--methods comb,post,...] [--rates 20,35,50]

Two experiments per pulse rate and volitional method, each a full session through the real pipeline
(orchestrator, estimator, controller, safety, recorder) on the in-process participant in virtual time:

- *Assisted contraction* (the demo's protocol: MVC calibration, then trapezoidal contractions at 20-60 %
  with proportional assist, so the intensity changes from pulse to pulse): Pearson r between the effort
  estimate and the participant's true voluntary drive, over all control-phase intervals and over the
  stimulated ones only; and the slope of the unsmoothed effort against the true volitional RMS (1 is
  unbiased).
- *Fatigue test* (constant intensity, constant voluntary drive 0.3, 60 s): the M-wave fatigue index (peak
  -to-peak relative to the first pulses, 1-s mean) against the true relative M-wave (median relative error
  over the session) and its decline; the decline of the median frequency against the true decline (means
  of the first and the last 5 s).

It prints a Markdown table (the one in the README) and returns the rows.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from acquisition.simulator.muscle import MuscleParams
from acquisition.simulator.profiles import DriveProfile, demo_profile
from acquisition.simulator.source import SimulatedParticipant
from closedloop.estimation.fatigue import smooth
from closedloop.estimation.interval import EstimatorConfig, IntervalEstimator
from closedloop.estimation.volitional import METHODS
from closedloop.pipeline import Phase, Session, SessionConfig
from closedloop.report import load_session
from closedloop.safety import SafetyLayer, SafetyLimits
from controllers.open_loop import Constant
from controllers.proportional import ProportionalAssist
from experiments.demo import demo_phases

__all__ = ["AssistResult", "FatigueResult", "assist_run", "fatigue_run", "main"]


@dataclass(frozen=True)
class AssistResult:
    method: str
    stim_hz: float
    r_all: float
    r_stimulated: float
    slope: float
    n_pulses: int


@dataclass(frozen=True)
class FatigueResult:
    method: str
    stim_hz: float
    mwave_index_error: float
    mwave_decline_true: float
    mwave_decline_est: float
    mdf_decline_true: float
    mdf_decline_est: float

    @property
    def mwave_decline_error(self) -> float:
        return abs(self.mwave_decline_est - self.mwave_decline_true) / self.mwave_decline_true

    @property
    def mdf_decline_error(self) -> float:
        return abs(self.mdf_decline_est - self.mdf_decline_true) / self.mdf_decline_true


def _run(
    sim: SimulatedParticipant, controller, phases, stim_hz: float, method: str, out: Path, mvc_uv: float | None = None
) -> None:
    limits = SafetyLimits(
        max_amplitude_ma=40.0, max_charge_uc=16.0, max_step_ma=5.0, max_rate_hz=2 * stim_hz, allowed_channels=(0,)
    )
    cfg = EstimatorConfig(method=method, mvc_uv=mvc_uv)
    session = Session(
        sim,
        lambda info: IntervalEstimator(info, cfg),
        controller,
        SafetyLayer(limits, sim.stimulator),
        SessionConfig(stim_hz=stim_hz, phases=phases),
        out,
        aux_sources={"GroundTruth": sim.truth},
    )
    res = asyncio.run(session.run())
    if not res.ok:
        raise RuntimeError(f"validation session failed: {res.error}")


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.corrcoef(a[ok], b[ok])[0, 1]) if ok.sum() > 3 else math.nan


def assist_run(method: str, stim_hz: float, seconds: float = 40.0, seed: int = 0) -> AssistResult:
    """Closed-loop assisted contraction; effort estimate against the true drive."""
    params = MuscleParams(seed=seed)
    sim = SimulatedParticipant(params, demo_profile(), duration_s=seconds + 1)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        _run(
            sim,
            ProportionalAssist(gain_ma_per_pct=0.4, deadband_pct=5.0, offset_ma=10.0),
            demo_phases(seconds),
            stim_hz,
            method,
            out,
        )
        data = load_session(out)
    est, truth = data["Estimates"], data["GroundTruth"]
    t = est.timestamps
    control = t >= 5.0  # the control phase of demo_phases
    drive = np.interp(t, truth.timestamps, truth.channel("drive"))
    stimulated = control & (est.channel("amplitude_ma") > 0)
    true_rms = np.sqrt((params.mvc_emg_rms_uv * drive) ** 2 + params.noise_rms_uv**2)
    e = est.channel("effort")
    ok = stimulated & np.isfinite(e)
    slope = float(np.sum(e[ok] * true_rms[ok]) / np.sum(true_rms[ok] ** 2)) if ok.any() else math.nan
    return AssistResult(
        method,
        stim_hz,
        _pearson(est.channel("effort_smooth")[control], drive[control]),
        _pearson(est.channel("effort_smooth")[stimulated], drive[stimulated]),
        slope,
        int(stimulated.sum()),
    )


def fatigue_run(
    method: str, stim_hz: float, seconds: float = 60.0, amplitude_ma: float = 25.0, drive: float = 0.3, seed: int = 0
) -> FatigueResult:
    """Constant stimulation with a constant voluntary contraction; fatigue indices against truth."""
    sim = SimulatedParticipant(
        MuscleParams(seed=seed), DriveProfile((0.0,), (drive,), "constant"), duration_s=seconds + 1
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        _run(sim, Constant(amplitude_ma), (Phase("fatigue", seconds, "control"),), stim_hz, method, out, mvc_uv=400.0)
        data = load_session(out)
    est, truth = data["Estimates"], data["GroundTruth"]
    t = est.timestamps
    pulsed = est.channel("amplitude_ma") > 0
    # true relative M-wave: each pulse's true peak-to-peak over the mean of the first five at the test
    # intensity (the safety ramp brings the first pulses up to it)
    idx = np.clip(np.searchsorted(truth.timestamps, t[pulsed]), 0, truth.timestamps.size - 1)
    true_ptp = truth.channel("mwave_ptp_true_uv")[idx]
    at_level = np.flatnonzero(np.abs(est.channel("amplitude_ma")[pulsed] - amplitude_ma) < 0.02 * amplitude_ma)
    true_rel = true_ptp / true_ptp[at_level[:5]].mean()
    est_rel = est.channel("mwave_ptp_rel")[pulsed]
    ok = np.isfinite(est_rel)
    # the index as a lab reads it: smoothed over 1 s (single M-waves carry the volitional EMG under them)
    smoothed = smooth(t[pulsed][ok], est_rel[ok], 1.0)
    index_error = float(np.median(np.abs(smoothed - true_rel[ok]) / true_rel[ok]))

    def decline(tt, values, first=5.0):
        v = np.asarray(values, dtype=float)
        start = np.nanmean(v[(tt >= tt[0]) & (tt < tt[0] + first)])
        end = np.nanmean(v[tt >= tt[-1] - first])
        return 1.0 - end / start

    tp = t[pulsed]
    mdf_t = truth.channel("mdf_true_hz")
    mdf_e = est.channel("mdf_hz")
    have = np.isfinite(mdf_e)
    if have.sum() < 2:  # no volitional spectrum at all with this method and rate
        mdf_true = mdf_est = math.nan
    else:
        span = truth.timestamps >= t[have][0]  # the estimate needs a spectral window first: same span
        mdf_true, mdf_est = decline(truth.timestamps[span], mdf_t[span]), decline(t[have], mdf_e[have])
    return FatigueResult(
        method, stim_hz, index_error, decline(tp, true_rel), decline(tp[ok], est_rel[ok]), mdf_true, mdf_est
    )


def _num(v: float, digits: int = 3) -> str:
    return "n/a" if not math.isfinite(v) else f"{v:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.validate_estimators", description=__doc__.split("\n")[0])
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--rates", default="20,35,50")
    ap.add_argument("--quick", action="store_true", help="shorter sessions (about a third of the time)")
    args = ap.parse_args(argv)
    methods = args.methods.split(",")
    rates = [float(r) for r in args.rates.split(",")]
    assist_s, fatigue_s = (20.0, 30.0) if args.quick else (40.0, 60.0)
    t0 = time.perf_counter()
    print(
        "| rate | method | effort r (all) | effort r (stimulated) | effort slope | M-wave index error (1-s mean) "
        "| M-wave decline true / est | MDF decline true / est (error) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for hz in rates:
        for m in methods:
            a = assist_run(m, hz, assist_s)
            f = fatigue_run(m, hz, fatigue_s)
            mdf = (
                "n/a (no volitional spectrum)"
                if math.isnan(f.mdf_decline_est)
                else f"{f.mdf_decline_true:.3f} / {f.mdf_decline_est:.3f} ({f.mdf_decline_error:.0%})"
            )
            print(
                f"| {hz:g} Hz | {m} | {_num(a.r_all)} | {_num(a.r_stimulated)} | {_num(a.slope, 2)} | "
                f"{f.mwave_index_error:.1%} | {f.mwave_decline_true:.3f} / {f.mwave_decline_est:.3f} | {mdf} |",
                flush=True,
            )
    print(
        f"\n{len(rates) * len(methods)} x 2 sessions in {time.perf_counter() - t0:.0f} s "
        f"({'quick' if args.quick else 'full'}: assist {assist_s:g} s, fatigue {fatigue_s:g} s)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
