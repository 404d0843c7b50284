"""Per-pulse controllers: pure objects, (estimate, context) in, next pulse intensity (mA) or a Burst out.

``CONTROLLERS`` maps the ``type`` names used in protocol files to the classes; every class is a dataclass
whose init fields are its parameters.
"""

from __future__ import annotations

from controllers.base import Controller, Output
from controllers.fatigue import FatigueCompensation
from controllers.open_loop import Constant, PulseSchedule, Ramp, RecruitmentSweep, Trapezoid
from controllers.pid import PID
from controllers.proportional import ProportionalAssist
from controllers.triggered import EMGTriggered

__all__ = [
    "CONTROLLERS",
    "PID",
    "Constant",
    "Controller",
    "EMGTriggered",
    "FatigueCompensation",
    "Output",
    "ProportionalAssist",
    "PulseSchedule",
    "Ramp",
    "RecruitmentSweep",
    "Trapezoid",
]

#: Protocol ``type`` name -> controller class.
CONTROLLERS: dict[str, type] = {
    "constant": Constant,
    "ramp": Ramp,
    "trapezoid": Trapezoid,
    "recruitment_sweep": RecruitmentSweep,
    "pulse_schedule": PulseSchedule,
    "emg_triggered": EMGTriggered,
    "proportional": ProportionalAssist,
    "pid": PID,
    "fatigue_compensation": FatigueCompensation,
}
