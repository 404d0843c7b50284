"""Proportional assist: stimulate in proportion to the residual volitional effort."""

from __future__ import annotations

import math
from dataclasses import dataclass

from closedloop.errors import ConfigError
from closedloop.types import Estimate

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
    effort (NaN) the output is 0 mA: no information, no stimulation.
    """

    gain_ma_per_pct: float = 0.5
    deadband_pct: float = 5.0
    offset_ma: float = 0.0
    max_ma: float = 30.0

    def __post_init__(self) -> None:
        for key in ("gain_ma_per_pct", "deadband_pct", "offset_ma", "max_ma"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"ProportionalAssist {key} = {value!r}: must be a finite number >= 0")

    def step(self, estimate: Estimate) -> float:
        effort = estimate.effort_pct_mvc
        if math.isnan(effort) or effort <= self.deadband_pct:
            return 0.0
        return min(self.max_ma, self.offset_ma + self.gain_ma_per_pct * (effort - self.deadband_pct))

    def reset(self) -> None:
        """Stateless: nothing to reset."""
