"""A live (real-time) session on the in-process participant, for signal tests: prints 'ready' once
pulses flow, then runs until signalled (or 30 s)."""

import asyncio
import sys
from pathlib import Path

from acquisition.simulator.muscle import MuscleParams
from acquisition.simulator.profiles import named_profile
from acquisition.simulator.source import SimulatedParticipant
from closedloop.estimation.interval import EstimatorConfig, IntervalEstimator
from closedloop.pipeline import Phase, Session, SessionConfig
from closedloop.safety import SafetyLayer, SafetyLimits
from controllers.open_loop import Constant


class Announce:
    def __init__(self, ctrl):
        self.ctrl, self.n = ctrl, 0

    def step(self, est, ctx=None):
        self.n += 1
        if self.n == 20:
            print("ready", flush=True)
        return self.ctrl.step(est, ctx)

    def reset(self):
        pass


def main() -> None:
    out = Path(sys.argv[1])
    sim = SimulatedParticipant(MuscleParams(seed=1), named_profile("constant:0.3"), realtime=True, duration_s=40)
    safety = SafetyLayer(SafetyLimits(allowed_channels=(0,)), sim.stimulator)
    session = Session(
        sim,
        lambda info: IntervalEstimator(info, EstimatorConfig(mvc_uv=400.0)),
        Announce(Constant(5.0)),
        safety,
        SessionConfig(stim_hz=25.0, phases=(Phase("go", 30.0, "control"),)),
        out,
    )
    res = asyncio.run(session.run())
    print(res.status, res.error, flush=True)


if __name__ == "__main__":
    main()
