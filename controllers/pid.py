"""PID control of volitional effort or of measured force, with a set-point trajectory and anti-windup."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

from closedloop.errors import ConfigError
from closedloop.types import ControlContext, Estimate
from controllers._checks import check_real, check_times

__all__ = ["PID"]

_MEASUREMENTS = ("effort_pct_mvc", "force_n")
_BIG = 1e12  # bound (mA, or units) of every intermediate product


def _clip(x: float) -> float:
    return -_BIG if x < -_BIG else (_BIG if x > _BIG else x)


@dataclass
class PID:
    """Discrete PID with derivative on measurement, conditional-integration anti-windup and feed-forward.

    Per decision, with ``e = setpoint(t_s) - m`` (``m`` the measurement) and ``dt = ctx.period_s``::

        P = kp * e
        D = kd * lowpass(-(m - m_prev) / dt)            # 0 at the first measurement after a reset
        I += ki * e * dt   unless bias + P + I + D is already at max_ma (min_ma) and ki * e > 0 (< 0)
        I  = clip(I, min_ma - bias_ma, max_ma - bias_ma)
        u  = clip(bias_ma + P + I + D, min_ma, max_ma);  u = 0 if u < min_on_ma

    The integral includes the current error (backward rectangle). Differentiating the measurement instead of
    the error means a set-point step gives no derivative kick. The low pass is first order,
    ``d += dt / (derivative_tau_s + dt) * (raw - d)`` (backward Euler), bypassed when ``derivative_tau_s`` is
    0. With a non-finite measurement (not calibrated, no force stream) the output is 0 mA and the state is left
    exactly as it was, as if the decision had not happened. Every intermediate term is bounded to +-1e12, so
    absurd but finite inputs saturate the output instead of overflowing.

    Parameters
    ----------
    kp:
        Proportional gain (mA per unit of error: per % MVC, or per N). Gains may be negative for a plant in
        which more current lowers the measurement.
    ki:
        Integral gain (mA per unit-second), default 0.
    kd:
        Derivative gain (mA-seconds per unit), default 0.
    measurement:
        ``"effort_pct_mvc"`` (``estimate.effort_pct_mvc``, % MVC; default) or ``"force_n"`` (``ctx.force_n``,
        N).
    setpoint:
        Constant set-point (% MVC or N), default 0; ignored if a trajectory is given.
    setpoint_times_s, setpoint_values:
        Optional set-point trajectory: times from the start of the phase (s, non-decreasing; a repeated time
        makes a step) and the set-point at each (% MVC or N). Interpolated linearly over ``ctx.t_s``, holding
        the first value before the first time and the last value after the last time. Give both or neither.
    bias_ma:
        Feed-forward amplitude added to the PID terms (mA), within ``[min_ma, max_ma]``; default 0.
    min_ma, max_ma:
        Saturation of the output (mA), ``0 <= min_ma <= max_ma``; defaults 0 and 30.
    derivative_tau_s:
        Time constant of the low pass on the derivative term (s); 0 (default) = no filter.
    min_on_ma:
        Outputs below this become 0 mA (below the motor threshold a pulse is pointless), default 0.
    """

    kp: float
    ki: float = 0.0
    kd: float = 0.0
    measurement: str = "effort_pct_mvc"
    setpoint: float = 0.0
    setpoint_times_s: tuple[float, ...] = ()
    setpoint_values: tuple[float, ...] = ()
    bias_ma: float = 0.0
    min_ma: float = 0.0
    max_ma: float = 30.0
    derivative_tau_s: float = 0.0
    min_on_ma: float = 0.0
    _integral: float = field(init=False, repr=False, default=0.0)
    _prev_m: float = field(init=False, repr=False, default=math.nan)
    _deriv: float = field(init=False, repr=False, default=0.0)

    def __post_init__(self) -> None:
        check_real(self, "kp", unit="mA per unit")
        check_real(self, "ki", unit="mA per unit-second")
        check_real(self, "kd", unit="mA-seconds per unit")
        if self.measurement not in _MEASUREMENTS:
            raise ConfigError(
                f"PID measurement = {self.measurement!r}: must be one of {', '.join(map(repr, _MEASUREMENTS))}"
            )
        check_real(self, "setpoint", unit="% MVC or N")
        check_times(self, "setpoint_times_s", strict=False, allow_empty=True)
        values = self.setpoint_values
        try:
            values = tuple(values)
        except TypeError:
            values = None
        if values is None or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
        ):
            raise ConfigError(f"PID setpoint_values = {self.setpoint_values!r}: must be a list of finite numbers")
        self.setpoint_values = tuple(float(v) for v in values)
        if len(self.setpoint_values) != len(self.setpoint_times_s):
            raise ConfigError(
                f"PID setpoint_values = {list(self.setpoint_values)!r}: must have one value per entry of "
                f"setpoint_times_s ({len(self.setpoint_times_s)}), or both empty"
            )
        check_real(self, "min_ma", lo=0, unit="mA")
        check_real(self, "max_ma", lo=self.min_ma, unit="mA, at least min_ma")
        check_real(self, "bias_ma", lo=self.min_ma, hi=self.max_ma, unit="mA, within [min_ma, max_ma]")
        check_real(self, "derivative_tau_s", lo=0, unit="s")
        check_real(self, "min_on_ma", lo=0, hi=self.max_ma, unit="mA, at most max_ma")

    @property
    def integral_ma(self) -> float:
        """The integral term (mA)."""
        return self._integral

    def setpoint_at(self, t_s: float) -> float:
        """The set-point (% MVC or N) at ``t_s`` seconds into the phase."""
        times, values = self.setpoint_times_s, self.setpoint_values
        if not times:
            return self.setpoint
        i = bisect.bisect_right(times, t_s)
        if i == 0:
            return values[0]
        if i == len(times):
            return values[-1]
        t0, t1 = times[i - 1], times[i]  # t0 <= t_s < t1
        return values[i - 1] + (values[i] - values[i - 1]) * ((t_s - t0) / (t1 - t0))

    def step(self, estimate: Estimate, ctx: ControlContext) -> float:
        m = estimate.effort_pct_mvc if self.measurement == "effort_pct_mvc" else ctx.force_n
        dt = ctx.period_s
        if not (math.isfinite(m) and math.isfinite(ctx.t_s) and math.isfinite(dt) and dt > 0):
            return 0.0
        # every product is clipped to +-_BIG, so absurd (finite) inputs saturate instead of overflowing to NaN
        e = _clip(self.setpoint_at(ctx.t_s) - m)
        p = _clip(self.kp * e)
        deriv = self._deriv
        if not math.isnan(self._prev_m):
            raw = _clip(-_clip(m - self._prev_m) / dt)
            if self.derivative_tau_s > 0:
                deriv += dt / (self.derivative_tau_s + dt) * (raw - deriv)
            else:
                deriv = raw
        d = _clip(self.kd * deriv)
        integral = self._integral
        increment = _clip(self.ki * e * dt)
        u0 = self.bias_ma + p + integral + d
        if not ((u0 >= self.max_ma and increment > 0) or (u0 <= self.min_ma and increment < 0)):
            integral += increment
        integral = min(max(integral, self.min_ma - self.bias_ma), self.max_ma - self.bias_ma)
        u = self.bias_ma + p + integral + d
        if math.isnan(u):  # cannot happen with clipped terms; never let a NaN out or into the state
            return 0.0
        self._prev_m, self._deriv, self._integral = m, deriv, integral
        u = min(max(u, self.min_ma), self.max_ma)
        return 0.0 if u < self.min_on_ma else u

    def reset(self) -> None:
        self._integral = 0.0
        self._prev_m = math.nan
        self._deriv = 0.0
