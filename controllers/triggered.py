"""EMG-triggered stimulation: a volitional contraction above a threshold starts a preset stimulation pattern."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from closedloop.errors import ConfigError
from closedloop.types import ControlContext, Estimate
from controllers._checks import TIME_EPS_S, check_real
from controllers.open_loop import Trapezoid

__all__ = ["EMGTriggered"]


@dataclass
class EMGTriggered:
    """Start a trapezoidal stimulation pattern when volitional effort crosses a threshold, with hysteresis.

    The effort ``estimate.effort_pct_mvc`` drives a Schmitt trigger: it goes *high* when the effort reaches
    ``on_pct`` and *low* again only when the effort falls below ``off_pct`` (in between it keeps its state).
    A low-to-high crossing starts the pattern at that decision, unless a pattern is still running or less
    than ``refractory_s`` has passed since the last one ended; such a crossing is ignored (counted in
    :attr:`n_ignored`), and the effort has to fall below ``off_pct`` and cross ``on_pct`` again. So after a
    trigger the controller re-arms only once the effort has fallen below ``off_pct`` and the refractory time
    has passed, and a pattern never starts late relative to the onset of a contraction. The pattern: a
    linear ramp from 0 to ``amplitude_ma`` over ``ramp_up_s``, ``hold_s`` at ``amplitude_ma``, a ramp back to
    0 over ``ramp_down_s``, timed by ``ctx.t_s``; once started it always finishes, whatever the effort. A
    non-finite effort (NaN: not calibrated, no estimate; inf) changes nothing: it never triggers and never
    counts as below ``off_pct``. The state is low after a reset, so an effort >= ``on_pct`` at the first
    decision triggers.

    Parameters
    ----------
    on_pct:
        Trigger threshold on the smoothed volitional effort (% MVC), > 0.
    off_pct:
        Re-arm threshold (% MVC), ``0 <= off_pct < on_pct``; the effort must fall strictly below it.
    refractory_s:
        Minimum time from the end of a pattern to the next trigger (s).
    amplitude_ma:
        Plateau amplitude of the pattern (mA).
    hold_s:
        Duration of the plateau (s).
    ramp_up_s, ramp_down_s:
        Durations of the linear ramps from and to 0 mA (s), default 0.
    """

    on_pct: float
    off_pct: float
    refractory_s: float
    amplitude_ma: float
    hold_s: float
    ramp_up_s: float = 0.0
    ramp_down_s: float = 0.0
    _pattern: Trapezoid | None = field(init=False, repr=False, default=None)
    _high: bool = field(init=False, repr=False, default=False)
    _start_s: float = field(init=False, repr=False, default=math.nan)
    _n_triggers: int = field(init=False, repr=False, default=0)
    _n_ignored: int = field(init=False, repr=False, default=0)

    def __post_init__(self) -> None:
        check_real(self, "on_pct", lo=0, lo_open=True, unit="% MVC")
        check_real(self, "off_pct", lo=0, hi=self.on_pct, hi_open=True, unit="% MVC, below on_pct")
        check_real(self, "refractory_s", lo=0, unit="s")
        check_real(self, "amplitude_ma", lo=0, unit="mA")
        for name in ("hold_s", "ramp_up_s", "ramp_down_s"):
            check_real(self, name, lo=0, unit="s")
        if self.ramp_up_s + self.hold_s + self.ramp_down_s <= 0:
            raise ConfigError(
                f"EMGTriggered hold_s = {self.hold_s!r}: must be > 0 s when ramp_up_s and ramp_down_s are 0 "
                "(empty pattern)"
            )
        self._pattern = Trapezoid(
            amplitude_ma=self.amplitude_ma,
            on_s=self.hold_s,
            off_s=0.0,
            ramp_up_s=self.ramp_up_s,
            ramp_down_s=self.ramp_down_s,
            cycles=1,
        )

    @property
    def pattern_s(self) -> float:
        """Duration of one stimulation pattern (s)."""
        return self.ramp_up_s + self.hold_s + self.ramp_down_s

    @property
    def n_triggers(self) -> int:
        """Patterns started since the last reset."""
        return self._n_triggers

    @property
    def n_ignored(self) -> int:
        """Crossings of ``on_pct`` ignored (pattern running or refractory) since the last reset."""
        return self._n_ignored

    def active(self, t_s: float) -> bool:
        """True if a pattern started earlier is still running at ``t_s``."""
        return t_s - self._start_s + TIME_EPS_S < self.pattern_s  # False while _start_s is NaN

    def step(self, estimate: Estimate, ctx: ControlContext) -> float:
        t = ctx.t_s
        if not math.isfinite(t):
            return 0.0
        effort = estimate.effort_pct_mvc
        crossed = False
        if math.isfinite(effort):
            if effort >= self.on_pct:
                crossed = not self._high
                self._high = True
            elif effort < self.off_pct:
                self._high = False
        if self.active(t):
            self._n_ignored += int(crossed)
            return self._pattern.amplitude_at(t - self._start_s)
        if not crossed:
            return 0.0
        if not math.isnan(self._start_s) and t + TIME_EPS_S < self._start_s + self.pattern_s + self.refractory_s:
            self._n_ignored += 1
            return 0.0
        self._start_s = t
        self._n_triggers += 1
        return self._pattern.amplitude_at(0.0)

    def reset(self) -> None:
        self._high = False
        self._start_s = math.nan
        self._n_triggers = 0
        self._n_ignored = 0
