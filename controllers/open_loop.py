"""Open-loop controllers: the intensity is a function of the time in the phase only.

They ignore the :class:`~closedloop.types.Estimate`; time comes from ``ctx.t_s`` (s since the phase's first
decision, at the pulse being decided; "the start of the phase" below), so the same protocol gives the same
pulses live, in a replay and in a simulation, whatever the offset of the data's decision grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from closedloop.errors import ConfigError
from closedloop.types import Burst, ControlContext, Estimate
from controllers._checks import TIME_EPS_S, check_int, check_real, check_times

__all__ = ["Constant", "PulseSchedule", "Ramp", "RecruitmentSweep", "Trapezoid"]

#: Most intensity levels a :class:`RecruitmentSweep` may have (guards against a tiny ``step_ma``).
MAX_SWEEP_LEVELS = 10_000
#: Shortest interval between the pulses of a burst (ms): shorter than any biphasic pulse.
MIN_BURST_INTERVAL_MS = 0.1


@dataclass
class Constant:
    """The same amplitude for every pulse, e.g. a fatigue test's constant stimulation.

    Parameters
    ----------
    amplitude_ma:
        Amplitude of every pulse (mA); 0 gives no pulses.
    """

    amplitude_ma: float

    def __post_init__(self) -> None:
        check_real(self, "amplitude_ma", lo=0, unit="mA")

    def step(self, estimate: Estimate, ctx: ControlContext) -> float:
        return self.amplitude_ma

    def reset(self) -> None:
        """Stateless: nothing to reset."""


@dataclass
class Ramp:
    """No pulses for ``delay_s``, then a linear ramp from ``start_ma`` to ``end_ma`` over ``ramp_s``, then hold.

    Parameters
    ----------
    start_ma:
        Amplitude at the start of the ramp, i.e. at ``t_s = delay_s`` (mA).
    end_ma:
        Amplitude at the end of the ramp and afterwards (mA); may be below ``start_ma`` (a ramp down).
    ramp_s:
        Duration of the ramp (s); 0 jumps to ``end_ma`` at ``delay_s``.
    delay_s:
        Time from the start of the phase without pulses (s), default 0.
    """

    start_ma: float
    end_ma: float
    ramp_s: float
    delay_s: float = 0.0

    def __post_init__(self) -> None:
        check_real(self, "start_ma", lo=0, unit="mA")
        check_real(self, "end_ma", lo=0, unit="mA")
        check_real(self, "ramp_s", lo=0, unit="s")
        check_real(self, "delay_s", lo=0, unit="s")

    def amplitude_at(self, t_s: float) -> float:
        """Amplitude (mA) of a pulse at ``t_s`` seconds into the phase."""
        u = t_s - self.delay_s
        if not u >= -TIME_EPS_S:  # before the delay ends, or t_s is NaN
            return 0.0
        if u + TIME_EPS_S >= self.ramp_s:
            return self.end_ma
        u = max(u, 0.0)
        return self.start_ma + (self.end_ma - self.start_ma) * (u / self.ramp_s)

    def step(self, estimate: Estimate, ctx: ControlContext) -> float:
        return self.amplitude_at(ctx.t_s)

    def reset(self) -> None:
        """Stateless (a function of ``ctx.t_s``): nothing to reset."""


@dataclass
class Trapezoid:
    """Intermittent trapezoidal contractions, e.g. a fatigue test's "5 s on / 5 s off".

    After ``delay_s`` (no pulses), each cycle of ``ramp_up_s + on_s + ramp_down_s + off_s`` seconds ramps
    linearly from ``start_ma`` to ``amplitude_ma`` over ``ramp_up_s``, holds ``amplitude_ma`` for ``on_s``,
    ramps back to ``start_ma`` over ``ramp_down_s`` and then gives no pulses (0 mA) for ``off_s``. Segments
    are half-open: a pulse exactly at the end of the hold belongs to the ramp down (or to the off time).
    The amplitude is a function of ``ctx.t_s`` only.

    Parameters
    ----------
    amplitude_ma:
        Plateau amplitude (mA).
    on_s:
        Duration of the plateau (s).
    off_s:
        Rest between contractions, no pulses (s).
    ramp_up_s, ramp_down_s:
        Durations of the linear ramps (s), default 0 (rectangular on/off).
    delay_s:
        Time from the start of the phase before the first cycle, no pulses (s), default 0.
    cycles:
        Number of contractions; 0 (default) repeats forever, otherwise 0 mA after that many cycles.
    start_ma:
        Amplitude at which the ramps start and end (mA), e.g. near the motor threshold; default 0 (the first
        pulse of a ramp from 0 mA is then no pulse).
    """

    amplitude_ma: float
    on_s: float
    off_s: float
    ramp_up_s: float = 0.0
    ramp_down_s: float = 0.0
    delay_s: float = 0.0
    cycles: int = 0
    start_ma: float = 0.0

    def __post_init__(self) -> None:
        check_real(self, "amplitude_ma", lo=0, unit="mA")
        for name in ("on_s", "off_s", "ramp_up_s", "ramp_down_s", "delay_s"):
            check_real(self, name, lo=0, unit="s")
        check_int(self, "cycles", lo=0)
        check_real(self, "start_ma", lo=0, unit="mA")
        if self.ramp_up_s + self.on_s + self.ramp_down_s <= 0:
            raise ConfigError(
                f"Trapezoid on_s = {self.on_s!r}: must be > 0 s when ramp_up_s and ramp_down_s are 0 "
                "(ramp_up_s + on_s + ramp_down_s = 0: nothing to stimulate)"
            )

    @property
    def cycle_s(self) -> float:
        """Duration of one cycle (s)."""
        return self.ramp_up_s + self.on_s + self.ramp_down_s + self.off_s

    @property
    def duration_s(self) -> float:
        """Time (s) from the start of the phase to the end of the last cycle; inf if ``cycles`` is 0."""
        return math.inf if self.cycles == 0 else self.delay_s + self.cycles * self.cycle_s

    def _locate(self, t_s: float) -> tuple[str, float]:
        """The segment containing ``t_s`` and the time (s) since the segment began."""
        u = t_s - self.delay_s
        if not (u >= -TIME_EPS_S and math.isfinite(u)):  # a non-finite t_s counts as before the start
            return "delay", 0.0
        u = max(u, 0.0)
        k = math.floor((u + TIME_EPS_S) / self.cycle_s)
        if self.cycles and k >= self.cycles:
            return "done", u - self.cycles * self.cycle_s
        r = max(u - k * self.cycle_s, 0.0)
        for name, length in (("ramp_up", self.ramp_up_s), ("on", self.on_s), ("ramp_down", self.ramp_down_s)):
            if r + TIME_EPS_S < length:
                return name, r
            r = max(r - length, 0.0)
        return "off", r

    def segment(self, t_s: float) -> str:
        """The segment at ``t_s``: ``"delay"``, ``"ramp_up"``, ``"on"`` (plateau), ``"ramp_down"``, ``"off"`` or
        ``"done"`` (after the last cycle)."""
        return self._locate(t_s)[0]

    def is_on(self, t_s: float) -> bool:
        """True while a contraction is stimulated at ``t_s`` (ramp up, plateau or ramp down)."""
        return self.segment(t_s) in ("ramp_up", "on", "ramp_down")

    def amplitude_at(self, t_s: float) -> float:
        """Amplitude (mA) of a pulse at ``t_s`` seconds into the phase."""
        name, r = self._locate(t_s)
        if name == "ramp_up":
            return self.start_ma + (self.amplitude_ma - self.start_ma) * (r / self.ramp_up_s)
        if name == "on":
            return self.amplitude_ma
        if name == "ramp_down":
            return self.amplitude_ma + (self.start_ma - self.amplitude_ma) * (r / self.ramp_down_s)
        return 0.0

    def step(self, estimate: Estimate, ctx: ControlContext) -> float:
        return self.amplitude_at(ctx.t_s)

    def reset(self) -> None:
        """Stateless (a function of ``ctx.t_s``): nothing to reset."""


_DIRECTIONS = ("up", "down", "up_down")


@dataclass
class RecruitmentSweep:
    """Single pulses at stepped intensities, for a recruitment curve (M-wave vs intensity).

    Decision slot ``n = round(t_s / period_s)`` pulses only if ``n % every_n_periods == 0``; the pulse at slot
    ``n`` has level index ``(n // every_n_periods) // pulses_per_level`` in the level sequence. After the last
    level: 0 mA and :attr:`done` is True.

    Parameters
    ----------
    start_ma, stop_ma:
        Lowest and highest intensity (mA), ``start_ma <= stop_ma``. The levels are ``start_ma + i * step_ma``
        up to ``stop_ma`` (included if it falls on that grid, never exceeded).
    step_ma:
        Increment between levels (mA), > 0.
    pulses_per_level:
        Pulses at each level, default 1.
    every_n_periods:
        Pulse once every this many pulse periods (the others are 0 mA), default 1; e.g. 20 at 20 Hz gives one
        pulse per second, so that each M-wave is free of the previous pulse's after-effects.
    direction:
        ``"up"`` (ascending), ``"down"`` (descending) or ``"up_down"`` (ascending then descending, the top
        level not repeated; default).
    """

    start_ma: float
    stop_ma: float
    step_ma: float
    pulses_per_level: int = 1
    every_n_periods: int = 1
    direction: str = "up_down"
    _levels: tuple[float, ...] = field(init=False, repr=False, default=())
    _done: bool = field(init=False, repr=False, default=False)

    def __post_init__(self) -> None:
        check_real(self, "start_ma", lo=0, unit="mA")
        check_real(self, "stop_ma", lo=self.start_ma, unit="mA, at least start_ma")
        check_real(self, "step_ma", lo=0, lo_open=True, unit="mA")
        check_int(self, "pulses_per_level", lo=1)
        check_int(self, "every_n_periods", lo=1)
        if self.direction not in _DIRECTIONS:
            raise ConfigError(
                f"RecruitmentSweep direction = {self.direction!r}: must be one of {', '.join(map(repr, _DIRECTIONS))}"
            )
        n = math.floor((self.stop_ma - self.start_ma) / self.step_ma + 1e-9) + 1
        if n > MAX_SWEEP_LEVELS:
            raise ConfigError(
                f"RecruitmentSweep step_ma = {self.step_ma!r}: must give at most {MAX_SWEEP_LEVELS} levels "
                f"(mA); {n} from {self.start_ma:g} to {self.stop_ma:g} mA"
            )
        up = tuple(min(round(self.start_ma + i * self.step_ma, 9), self.stop_ma) for i in range(n))
        if self.direction == "up":
            self._levels = up
        elif self.direction == "down":
            self._levels = up[::-1]
        else:
            self._levels = up + up[-2::-1]

    def levels(self) -> tuple[float, ...]:
        """The intensities (mA) in the order they are given, one entry per level (not per pulse)."""
        return self._levels

    def duration_s(self, period_s: float) -> float:
        """Time (s) from the start of the phase to the first decision after the last level, at ``period_s``."""
        if not (math.isfinite(period_s) and period_s > 0):
            raise ConfigError(f"RecruitmentSweep.duration_s period_s = {period_s!r}: must be a number > 0 (s)")
        return len(self._levels) * self.pulses_per_level * self.every_n_periods * period_s

    @property
    def done(self) -> bool:
        """True once a decision fell after the last level."""
        return self._done

    def step(self, estimate: Estimate, ctx: ControlContext) -> float:
        ratio = ctx.t_s / ctx.period_s if ctx.period_s > 0 else math.nan
        if not math.isfinite(ratio) or ratio < -0.5:
            return 0.0
        slot = round(ratio)
        index = (slot // self.every_n_periods) // self.pulses_per_level
        if index >= len(self._levels):
            self._done = True
            return 0.0
        return self._levels[index] if slot % self.every_n_periods == 0 else 0.0

    def reset(self) -> None:
        self._done = False


@dataclass
class PulseSchedule:
    """Bursts of pulses at scheduled times, e.g. twitch-interpolation doublets during and after an MVC.

    At the first decision with ``ctx.t_s >= times_s[i]`` (not yet served), returns
    ``Burst((amplitude_ma,) * n_pulses, interval_ms / 1000)`` (a plain float if ``n_pulses`` is 1); otherwise
    0 mA. Each scheduled time is served exactly once: if one decision passes several times (decisions coarser
    than the schedule), they are served at successive decisions.

    Parameters
    ----------
    times_s:
        Times from the start of the phase (s), >= 0 and strictly increasing.
    amplitude_ma:
        Amplitude of every pulse of a burst (mA), typically supramaximal.
    n_pulses:
        Pulses per burst, default 2 (a doublet).
    interval_ms:
        Interval between the pulses of a burst (ms), in [0.1, 1000], default 10 (100 Hz doublet).
    """

    times_s: tuple[float, ...]
    amplitude_ma: float
    n_pulses: int = 2
    interval_ms: float = 10.0
    _next: int = field(init=False, repr=False, default=0)

    def __post_init__(self) -> None:
        check_times(self, "times_s", strict=True, allow_empty=False)
        check_real(self, "amplitude_ma", lo=0, unit="mA")
        check_int(self, "n_pulses", lo=1, hi=100)
        check_real(self, "interval_ms", lo=MIN_BURST_INTERVAL_MS, hi=1000, unit="ms")

    @property
    def n_served(self) -> int:
        """How many scheduled times have been served since the last reset."""
        return self._next

    @property
    def done(self) -> bool:
        """True once every scheduled time has been served."""
        return self._next >= len(self.times_s)

    def step(self, estimate: Estimate, ctx: ControlContext) -> float | Burst:
        if self._next < len(self.times_s) and ctx.t_s + TIME_EPS_S >= self.times_s[self._next]:
            self._next += 1
            if self.n_pulses == 1:
                return self.amplitude_ma
            return Burst((self.amplitude_ma,) * self.n_pulses, self.interval_ms / 1000.0)
        return 0.0

    def reset(self) -> None:
        self._next = 0
