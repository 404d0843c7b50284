"""Open-loop controllers: intensity as a function of time only."""

from __future__ import annotations

import math
from dataclasses import dataclass

from closedloop.errors import ConfigError
from closedloop.types import Estimate

__all__ = ["Constant"]


@dataclass
class Constant:
    """The same amplitude for every pulse (mA), e.g. a fatigue test's constant intermittent stimulation."""

    amplitude_ma: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.amplitude_ma) and self.amplitude_ma >= 0):
            raise ConfigError(f"Constant amplitude_ma = {self.amplitude_ma!r}: must be a finite number >= 0")

    def step(self, estimate: Estimate) -> float:
        return self.amplitude_ma

    def reset(self) -> None:
        """Stateless: nothing to reset."""
