"""Proportional assist: stimulate in proportion to the residual volitional effort."""

from __future__ import annotations

import math
from dataclasses import dataclass

from closedloop.types import ControlContext, Estimate
from controllers._checks import check_real

__all__ = ["ProportionalAssist"]


@dataclass
class ProportionalAssist:
    """``amplitude = offset + gain x (effort - deadband)`` above the deadband, 0 below, at most ``max_ma``.

    Parameters
    ----------
    gain_ma_per_pct:
        mA of stimulation per % MVC of volitional effort above the deadband.
    deadband_pct:
        Effort (% MVC) below which there is no stimulation.
    offset_ma:
        Amplitude at the deadband edge (e.g. near the motor threshold), mA.
    max_ma:
        Saturation of the controller's own output (mA); the safety layer's limits apply on top.

    The input is ``estimate.effort_pct_mvc`` (smoothed volitional effort in % MVC); with no calibrated
    effort (NaN) or a non-finite one the output is 0 mA: no information, no stimulation.
    """

    gain_ma_per_pct: float = 0.5
    deadband_pct: float = 5.0
    offset_ma: float = 0.0
    max_ma: float = 30.0

    def __post_init__(self) -> None:
        check_real(self, "gain_ma_per_pct", lo=0, unit="mA per % MVC")
        check_real(self, "deadband_pct", lo=0, unit="% MVC")
        check_real(self, "offset_ma", lo=0, unit="mA")
        check_real(self, "max_ma", lo=0, unit="mA")

    def step(self, estimate: Estimate, ctx: ControlContext) -> float:
        effort = estimate.effort_pct_mvc
        if not math.isfinite(effort) or effort <= self.deadband_pct:
            return 0.0
        return min(self.max_ma, self.offset_ma + self.gain_ma_per_pct * (effort - self.deadband_pct))

    def reset(self) -> None:
        """Stateless: nothing to reset."""
