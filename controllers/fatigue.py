"""Fatigue compensation: raise the intensity as the M-wave declines, to hold the evoked response."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from closedloop.errors import ConfigError
from closedloop.types import Burst, ControlContext, Estimate
from controllers._checks import check_int, check_real
from controllers.base import Controller

__all__ = ["FatigueCompensation"]


def _amplitude(value: float) -> float:
    return float(value) if math.isfinite(value) and value > 0 else 0.0


@dataclass
class FatigueCompensation:
    """Wrap any controller and add a boost (mA) to its pulses that grows as the M-wave falls below a reference.

    The inner controller's output passes through with ``boost_ma`` added to every non-zero amplitude (also to
    each pulse of a :class:`~closedloop.types.Burst`). The reference M-wave (``estimate.mwave_ptp_uv``, uV,
    control channel) is learned per inner amplitude level (rounded to 0.1 mA) as the mean of the first
    ``reference_pulses`` usable M-waves at that level. Once a level has its reference, every further usable
    M-wave ``m`` at that level updates (integral action)::

        boost_ma = clip(boost_ma + gain_ma * clip(1 - m / ref, -1, 1), 0, max_boost_ma)

    The M-wave in the estimate of step ``k`` belongs to the pulse commanded at step ``k - 1``, so the level
    and the commanded amplitude of that pulse are remembered. An M-wave is *usable* if a pulse was delivered
    (``estimate.amplitude_ma`` finite and > 0) within ``amplitude_tolerance_ma`` of what was commanded (so
    pulses that the safety layer's ramp limit held down do not enter a reference), if it is finite and at
    least ``min_response_uv``, and if the estimate is a new one (its ``index`` differs from the last seen).
    M-waves after a Burst are not used (the pulses of a burst overlap in one interval).

    Assumptions: the inner output is piecewise constant (Constant, Trapezoid plateaus, RecruitmentSweep
    levels, PID near steady state) so that each level is visited by many pulses; ramp pulses each form a
    level of their own and are compensated only once seen ``reference_pulses`` times. There is one boost for
    all levels. A reference learned while a boost is already applied includes that boost. More current
    cannot restore an M-wave that is already maximal, so at supramaximal intensities the boost climbs to
    ``max_boost_ma``; that bound is the dose of extra current you accept.

    Parameters
    ----------
    inner:
        The controller whose output is compensated; :meth:`reset` resets it too.
    max_boost_ma:
        Largest boost (mA), >= 0.
    gain_ma:
        Boost change per usable pulse per unit relative shortfall ``1 - m / ref`` (mA), default 0.2: a
        sustained 20 % shortfall raises the intensity by 0.04 mA per pulse (1 mA/s at 25 Hz).
    reference_pulses:
        Usable M-waves averaged into each level's reference, default 5.
    min_response_uv:
        Smaller M-waves (uV, peak-to-peak) are treated as no response (noise, electrode problem) and ignored,
        default 50 (the usual motor-threshold criterion).
    amplitude_tolerance_ma:
        Largest difference between delivered and commanded amplitude (mA) for the M-wave to be used, default
        2; keep it at least the stimulator's amplitude resolution (2 mA for a RehaStim 2), which the safety
        layer rounds down to.
    """

    inner: Controller
    max_boost_ma: float
    gain_ma: float = 0.2
    reference_pulses: int = 5
    min_response_uv: float = 50.0
    amplitude_tolerance_ma: float = 2.0
    _boost: float = field(init=False, repr=False, default=0.0)
    _sums: dict[int, float] = field(init=False, repr=False, default_factory=dict)
    _counts: dict[int, int] = field(init=False, repr=False, default_factory=dict)
    _prev_level: int | None = field(init=False, repr=False, default=None)
    _prev_cmd_ma: float = field(init=False, repr=False, default=math.nan)
    _last_index: int | None = field(init=False, repr=False, default=None)
    _n_updates: int = field(init=False, repr=False, default=0)

    def __post_init__(self) -> None:
        if not isinstance(self.inner, Controller):
            raise ConfigError(
                f"FatigueCompensation inner = {self.inner!r}: must be a controller "
                "(an object with step(estimate, ctx) and reset())"
            )
        check_real(self, "max_boost_ma", lo=0, unit="mA")
        check_real(self, "gain_ma", lo=0, unit="mA per unit relative shortfall")
        check_int(self, "reference_pulses", lo=1)
        check_real(self, "min_response_uv", lo=0, unit="uV")
        check_real(self, "amplitude_tolerance_ma", lo=0, unit="mA")

    @property
    def boost_ma(self) -> float:
        """The boost currently added to every non-zero inner amplitude (mA)."""
        return self._boost

    @property
    def n_updates(self) -> int:
        """M-waves that updated the boost since the last reset."""
        return self._n_updates

    @property
    def references_uv(self) -> dict[float, float]:
        """Complete references: inner level (mA, 0.1 mA steps) -> reference M-wave (uV)."""
        return {k / 10: self._sums[k] / n for k, n in sorted(self._counts.items()) if n >= self.reference_pulses}

    def _learn(self, estimate: Estimate) -> None:
        level, commanded = self._prev_level, self._prev_cmd_ma
        index, self._last_index = self._last_index, estimate.index
        if level is None or estimate.index == index:
            return
        delivered, m = estimate.amplitude_ma, estimate.mwave_ptp_uv
        if not (math.isfinite(delivered) and delivered > 0):
            return
        if not abs(delivered - commanded) <= self.amplitude_tolerance_ma + 1e-9:
            return
        if not (math.isfinite(m) and m >= self.min_response_uv):
            return
        n = self._counts.get(level, 0)
        if n < self.reference_pulses:
            self._sums[level] = self._sums.get(level, 0.0) + m
            self._counts[level] = n + 1
            return
        shortfall = min(max(1.0 - m / (self._sums[level] / n), -1.0), 1.0)
        self._boost = min(max(self._boost + self.gain_ma * shortfall, 0.0), self.max_boost_ma)
        self._n_updates += 1

    def step(self, estimate: Estimate, ctx: ControlContext) -> float | Burst:
        self._learn(estimate)
        out = self.inner.step(estimate, ctx)
        self._prev_level, self._prev_cmd_ma = None, math.nan
        if isinstance(out, Burst):
            amps = (_amplitude(a) for a in out.amplitudes_ma)
            return Burst(tuple(a + self._boost if a > 0 else 0.0 for a in amps), out.interval_s)
        a = _amplitude(out)
        if a == 0:
            return 0.0
        self._prev_level, self._prev_cmd_ma = round(a * 10), a + self._boost
        return self._prev_cmd_ma

    def reset(self) -> None:
        self.inner.reset()
        self._boost = 0.0
        self._sums.clear()
        self._counts.clear()
        self._prev_level = None
        self._prev_cmd_ma = math.nan
        self._last_index = None
        self._n_updates = 0
