"""The safety layer: every pulse passes here, and only here, on its way to a stimulator.

Controllers propose (:class:`~closedloop.types.PulseCommand`); the :class:`SafetyLayer` decides. It checks each
command against :class:`SafetyLimits` (bounded by the absolute ceilings below, which configuration may
lower but never raise), clamps or refuses it, and hands the stimulator a :class:`SafePulse`, a type that
only this module creates. Stimulator drivers accept nothing else (:func:`require_safe`). On any fault the
layer turns output off (``stimulator.stop()``) and stays off until :meth:`SafetyLayer.reset` is called
explicitly.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal, Protocol, runtime_checkable

from closedloop.errors import ConfigError, SafetyError
from closedloop.types import PulseCommand

__all__ = [
    "ABSOLUTE_MAX_AMPLITUDE_MA",
    "ABSOLUTE_MAX_CHARGE_UC",
    "ABSOLUTE_MAX_PULSE_WIDTH_US",
    "ABSOLUTE_MAX_RATE_HZ",
    "SafePulse",
    "SafetyEvent",
    "SafetyLayer",
    "SafetyLimits",
    "Stimulator",
    "require_safe",
]

#: Hard ceilings in code. A protocol may set lower limits, never higher ones.
ABSOLUTE_MAX_AMPLITUDE_MA = 100.0
ABSOLUTE_MAX_PULSE_WIDTH_US = 1000.0
ABSOLUTE_MAX_CHARGE_UC = 60.0
ABSOLUTE_MAX_RATE_HZ = 200.0

_TOKEN = object()  # only this module can mint SafePulse objects


@dataclass(frozen=True)
class SafetyLimits:
    """Limits in force for a session.

    Parameters
    ----------
    max_amplitude_ma:
        Largest current amplitude of any pulse (mA).
    max_pulse_width_us:
        Longest pulse width (us).
    max_charge_uc:
        Largest charge per phase, amplitude x pulse width (uC).
    max_step_ma:
        Largest increase of amplitude from one pulse to the next on a channel (mA). After a deliberate stop
        (the controller asked for 0 mA, see :meth:`SafetyLayer.no_pulse`) or a pause longer than
        ``ramp_reset_s``, the next pulse counts from 0 mA, so stimulation always restarts from a low level.
        Decreases are never limited (turning down must always be possible).
    ramp_reset_s:
        A pause without pulses longer than this (s) restarts the ramp from 0 mA; a single skipped pulse
        (e.g. a missed deadline) does not.
    max_rate_hz:
        Highest instantaneous pulse rate per channel (1 / shortest pulse-to-pulse interval, Hz).
    allowed_channels:
        Stimulator channels that may be used (0-based).
    on_violation:
        ``"clamp"``: bring an out-of-limit amplitude/pulse width into the limits and deliver;
        ``"refuse"``: drop the pulse. Either way the event is counted.
    channel_max_amplitude_ma, channel_max_pulse_width_us:
        Optional tighter limits per channel, one value per entry of ``allowed_channels`` in the same order
        (e.g. a smaller muscle on channel 1); empty: the global limits apply to every channel.
    """

    max_amplitude_ma: float = 40.0
    max_pulse_width_us: float = 400.0
    max_charge_uc: float = 16.0
    max_step_ma: float = 5.0
    ramp_reset_s: float = 0.25
    max_rate_hz: float = 100.0
    allowed_channels: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7)
    on_violation: Literal["clamp", "refuse"] = "clamp"
    channel_max_amplitude_ma: tuple[float, ...] = ()
    channel_max_pulse_width_us: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_channels", tuple(int(c) for c in self.allowed_channels))
        for key, ceiling in (
            ("channel_max_amplitude_ma", self.max_amplitude_ma),
            ("channel_max_pulse_width_us", self.max_pulse_width_us),
        ):
            values = tuple(float(v) for v in getattr(self, key))
            object.__setattr__(self, key, values)
            if values and len(values) != len(self.allowed_channels):
                raise ConfigError(
                    f"safety limit {key} has {len(values)} values: give one per allowed channel "
                    f"({len(self.allowed_channels)}: {list(self.allowed_channels)})"
                )
            if not all(math.isfinite(v) and 0 < v <= ceiling for v in values):
                raise ConfigError(f"safety limit {key} = {list(values)}: each must be > 0 and <= {ceiling:g}")
        for key, value, ceiling in (
            ("max_amplitude_ma", self.max_amplitude_ma, ABSOLUTE_MAX_AMPLITUDE_MA),
            ("max_pulse_width_us", self.max_pulse_width_us, ABSOLUTE_MAX_PULSE_WIDTH_US),
            ("max_charge_uc", self.max_charge_uc, ABSOLUTE_MAX_CHARGE_UC),
            ("max_rate_hz", self.max_rate_hz, ABSOLUTE_MAX_RATE_HZ),
            ("max_step_ma", self.max_step_ma, ABSOLUTE_MAX_AMPLITUDE_MA),
        ):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 < value <= ceiling):
                raise ConfigError(f"safety limit {key} = {value!r} not allowed: must be > 0 and <= {ceiling:g}")
        if not (isinstance(self.ramp_reset_s, (int, float)) and 0 <= self.ramp_reset_s <= 10):
            raise ConfigError(f"safety limit ramp_reset_s = {self.ramp_reset_s!r}: allowed 0..10 s")
        if not self.allowed_channels or min(self.allowed_channels) < 0:
            raise ConfigError(f"safety limit allowed_channels = {self.allowed_channels!r}: need channels >= 0")
        if self.on_violation not in ("clamp", "refuse"):
            raise ConfigError(f"safety limit on_violation = {self.on_violation!r}: allowed 'clamp' or 'refuse'")

    def for_channel(self, channel: int) -> tuple[float, float]:
        """``(max_amplitude_ma, max_pulse_width_us)`` in force on ``channel``."""
        i = self.allowed_channels.index(channel)
        amp = self.channel_max_amplitude_ma[i] if self.channel_max_amplitude_ma else self.max_amplitude_ma
        pw = self.channel_max_pulse_width_us[i] if self.channel_max_pulse_width_us else self.max_pulse_width_us
        return amp, pw

    def as_dict(self) -> dict:
        """JSON-ready form, for summary.json."""
        d = asdict(self)
        d["allowed_channels"] = list(self.allowed_channels)
        d["channel_max_amplitude_ma"] = list(self.channel_max_amplitude_ma)
        d["channel_max_pulse_width_us"] = list(self.channel_max_pulse_width_us)
        return d


@dataclass(frozen=True)
class SafePulse:
    """A pulse the safety layer has checked. Only :class:`SafetyLayer` can create one.

    Attributes are those of :class:`~closedloop.types.PulseCommand` after clamping; ``requested`` is what
    the controller asked for.
    """

    t: float
    channel: int
    amplitude_ma: float
    pulse_width_us: float
    requested: PulseCommand
    _token: object = field(repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if self._token is not _TOKEN:
            raise SafetyError("a SafePulse can only be created by the SafetyLayer")

    @property
    def charge_uc(self) -> float:
        """Charge per phase in microcoulombs."""
        return self.amplitude_ma * self.pulse_width_us * 1e-3


def require_safe(pulse: object) -> SafePulse:
    """Return ``pulse`` if it came out of the safety layer, else raise :class:`SafetyError` (for drivers)."""
    if type(pulse) is not SafePulse or pulse._token is not _TOKEN:
        raise SafetyError(f"refusing to deliver {pulse!r}: not checked by the safety layer")
    return pulse


@runtime_checkable
class Stimulator(Protocol):
    """A stimulator driver. Drivers accept only :class:`SafePulse` objects.

    ``deliver`` sends one pulse now and returns the LSL time at which it was handed to the device;
    ``stop`` turns all output off at once, must be idempotent and must not raise.
    """

    def open(self) -> None: ...

    def deliver(self, pulse: SafePulse) -> float: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class SafetyEvent:
    """Something the safety layer did: ``kind`` is ``"clamp"``, ``"refuse"`` or ``"output_off"``."""

    t: float
    kind: str
    reason: str

    def as_dict(self) -> dict:
        return {"t": self.t, "kind": self.kind, "reason": self.reason}


class SafetyLayer:
    """Checks every command, delivers it through the stimulator, and turns output off on faults.

    Parameters
    ----------
    limits:
        The limits in force.
    stimulator:
        The driver; the safety layer is the only caller of its ``deliver``.
    max_events:
        At most this many individual events are kept (all are counted in :attr:`counts`).
    on_event:
        Called with each kept event (the session records them in session.xdf).
    """

    def __init__(
        self,
        limits: SafetyLimits,
        stimulator: Stimulator,
        max_events: int = 1000,
        on_event: Callable[[SafetyEvent], None] | None = None,
    ) -> None:
        self.limits = limits
        self.stimulator = stimulator
        self.events: list[SafetyEvent] = []
        self.counts: Counter[str] = Counter()
        self.max_events = max_events
        self.tripped: str | None = None
        self._lock = threading.Lock()
        # what the stimulator can do: its resolution and fastest pulse rate, if it says
        self._amp_step = float(getattr(stimulator, "amplitude_step_ma", 0.0) or 0.0)
        self._pw_step = float(getattr(stimulator, "pulse_width_step_us", 0.0) or 0.0)
        min_interval = float(getattr(stimulator, "min_interval_s", 0.0) or 0.0)
        self._max_rate_hz = min(limits.max_rate_hz, 1.0 / min_interval) if min_interval > 0 else limits.max_rate_hz
        #: Called with every event kept (e.g. to record it); must not raise.
        self.on_event = on_event
        self._last_amplitude: dict[int, float] = {}
        self._last_t: dict[int, float] = {}
        self.n_delivered = 0
        self.max_delivered_ma = 0.0

    def _event(self, t: float, kind: str, reason: str) -> None:
        self.counts[kind] += 1
        if len(self.events) < self.max_events or kind == "output_off":
            ev = SafetyEvent(t, kind, reason)
            self.events.append(ev)
            if self.on_event is not None:
                try:
                    self.on_event(ev)
                except Exception:  # recording an event must never stop the safety layer from acting
                    pass

    def check(self, cmd: PulseCommand) -> SafePulse | None:
        """Apply the limits to ``cmd``; return the pulse to deliver, or None (no pulse / refused)."""
        lim = self.limits
        t = cmd.t
        if self.tripped is not None:
            return None
        values = (cmd.t, cmd.amplitude_ma, cmd.pulse_width_us)
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            self.output_off(t if math.isfinite(t) else math.nan, f"non-finite pulse command {cmd!r}")
            return None
        if cmd.channel not in lim.allowed_channels:
            self._event(t, "refuse", f"channel {cmd.channel} not in allowed_channels {list(lim.allowed_channels)}")
            return None
        amp, pw = float(cmd.amplitude_ma), float(cmd.pulse_width_us)
        if amp <= 0.0 or pw <= 0.0:
            if amp < 0.0 or pw < 0.0:
                self._event(t, "refuse", f"negative amplitude/pulse width requested ({amp:g} mA, {pw:g} us)")
            self._last_amplitude[cmd.channel] = 0.0
            return None
        reasons = []
        max_amp, max_pw = lim.for_channel(cmd.channel)
        if pw > max_pw:
            reasons.append(f"pulse width {pw:g} us > max {max_pw:g} us on channel {cmd.channel}")
            pw = max_pw
        if amp > max_amp:
            reasons.append(f"amplitude {amp:g} mA > max {max_amp:g} mA on channel {cmd.channel}")
            amp = max_amp
        if amp * pw * 1e-3 > lim.max_charge_uc:
            reasons.append(f"charge {amp * pw * 1e-3:g} uC > max {lim.max_charge_uc:g} uC")
            amp = lim.max_charge_uc / (pw * 1e-3)
        last_t = self._last_t.get(cmd.channel)
        base = self._last_amplitude.get(cmd.channel, 0.0)
        if last_t is None or t - last_t > lim.ramp_reset_s:
            base = 0.0  # stimulation paused: start again from a low level
        ramp_cap = base + lim.max_step_ma
        if amp > ramp_cap:
            reasons.append(f"step to {amp:g} mA > {lim.max_step_ma:g} mA above the previous pulse")
            amp = ramp_cap
        # the device's resolution: round down, so that what was checked is what comes out
        if self._amp_step:
            amp = math.floor(amp / self._amp_step + 1e-9) * self._amp_step
        if self._pw_step:
            pw = math.floor(pw / self._pw_step + 1e-9) * self._pw_step
        if amp <= 0.0 or pw <= 0.0:
            self._event(t, "refuse", f"below the stimulator's resolution ({cmd.amplitude_ma:g} mA)")
            return None
        if last_t is not None and (t - last_t) * self._max_rate_hz < 1.0 - 1e-9:
            self._event(
                t,
                "refuse",
                f"pulse {1e3 * (t - last_t):.2f} ms after the previous one exceeds max_rate_hz {self._max_rate_hz:g}",
            )
            return None
        if reasons:
            if lim.on_violation == "refuse":
                self._event(t, "refuse", "; ".join(reasons))
                return None
            self._event(t, "clamp", "; ".join(reasons))
        return SafePulse(t, cmd.channel, amp, pw, cmd, _TOKEN)

    def deliver(self, cmd: PulseCommand) -> SafePulse | None:
        """Check ``cmd`` and, if a pulse remains, deliver it now; return what was delivered (or None).

        A driver failure turns output off and raises :class:`SafetyError`.
        """
        with self._lock:  # a watchdog thread's output_off() cannot slip between the check and the delivery
            pulse = self.check(cmd)
            if pulse is None:
                return None
            try:
                t = self.stimulator.deliver(pulse)
            except Exception as exc:
                self._output_off_locked(cmd.t, f"stimulator failed: {exc!r}")
                raise SafetyError(f"stimulator failed while delivering a pulse: {exc}") from exc
        if self.tripped is not None:  # turned off while this pulse was being handed over: off again, after it
            self._stop_stimulator()
        if t != pulse.t:
            pulse = SafePulse(t, pulse.channel, pulse.amplitude_ma, pulse.pulse_width_us, pulse.requested, _TOKEN)
        self._last_amplitude[pulse.channel] = pulse.amplitude_ma
        self._last_t[pulse.channel] = pulse.t
        self.n_delivered += 1
        self.max_delivered_ma = max(self.max_delivered_ma, pulse.amplitude_ma)
        return pulse

    def no_pulse(self, channel: int) -> None:
        """Record a deliberate stop on ``channel`` (0 mA asked): the next pulse ramps up from 0 mA again."""
        self._last_amplitude[channel] = 0.0

    def output_off(self, t: float, reason: str) -> None:
        """Turn all output off now and stay off until :meth:`reset`; record why. Never raises.

        Safe to call from another thread (a watchdog): if a delivery is in progress it waits for it at most
        a few milliseconds, then stops the stimulator anyway (a delivery that hangs is the fault)."""
        got = self._lock.acquire(timeout=0.002)
        try:
            self._output_off_locked(t, reason)
        finally:
            if got:
                self._lock.release()

    def _output_off_locked(self, t: float, reason: str) -> None:
        first = self.tripped is None
        if first:
            self.tripped = reason  # first: any delivery that checks from now on refuses
        problem = self._stop_stimulator()
        if problem:
            reason = f"{reason}; {problem}"
        if first:
            self._event(t, "output_off", reason)
        self._last_amplitude.clear()

    def _stop_stimulator(self) -> str:
        try:
            self.stimulator.stop()
        except Exception as exc:  # stop() must not raise; if it does, say so but keep the trip
            return f"stimulator.stop() failed: {exc!r}"
        return ""

    def reset(self) -> None:
        """Explicitly re-arm after an output-off (ramp limits start again from 0 mA)."""
        self.tripped = None
        self._last_amplitude.clear()
        self._last_t.clear()
