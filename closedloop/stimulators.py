"""Stimulator drivers. Each accepts only :class:`~closedloop.safety.SafePulse` objects.

- :class:`SimulatedStimulator` delivers pulses to an in-process simulated participant.
- :class:`LSLStimulator` publishes every pulse on an LSL command stream, for external stimulator software
  and for the simulated participant running as an LSL device (``closedloop simulate``).

LSL command stream format (one sample per pulse, irregular rate, double64, 3 channels)::

    channel        stimulator channel, 0-based; -1 means "all output off now"
    amplitude_ma   current amplitude (mA)
    pulse_width_us pulse width (us)

The sample's LSL timestamp is the delivery time: now, or a moment shortly ahead for the later pulses of a
burst (a doublet); the receiver applies each pulse at its timestamp.

Drivers that can deliver a pulse at a given near-future time (``pulse.t``; the later pulses of a burst) say
so with ``can_schedule = True``; the others receive only pulses due now.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Protocol

from closedloop.errors import StimulatorError
from closedloop.safety import SafePulse, require_safe
from closedloop.types import StreamInfo

__all__ = ["COMMAND_CHANNELS", "LSLStimulator", "PulseSink", "ShadowStimulator", "SimulatedStimulator"]

#: Channel labels of the LSL command stream.
COMMAND_CHANNELS = ("channel", "amplitude_ma", "pulse_width_us")


class PulseSink(Protocol):
    """Something that physically receives pulses (the simulated participant)."""

    def schedule_pulse(self, t: float, channel: int, amplitude_ma: float, pulse_width_us: float) -> None: ...


class _OnOff:
    """The output state every driver keeps: ``stopped`` and when (``stopped_at``, time.monotonic(), which is
    the LSL clock on Linux); ``deliver`` refuses while stopped."""

    name = "stimulator"

    def __init__(self) -> None:
        self.stopped = False
        self.stopped_at: float | None = None

    def open(self) -> None:
        self.stopped = False

    def _check(self, pulse: SafePulse) -> SafePulse:
        pulse = require_safe(pulse)
        if self.stopped:
            raise StimulatorError(f"{self.name} is stopped; reset the safety layer to restart")
        return pulse

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.stopped_at = time.monotonic()

    def close(self) -> None:
        self.stop()


class SimulatedStimulator(_OnOff):
    """Delivers pulses to an in-process simulated participant (a :class:`PulseSink`).

    Parameters
    ----------
    sink:
        The participant; it applies each pulse at the first sample at or after the delivery time.
    clock:
        The time base of the participant (for virtual-time simulations its own clock).
    """

    name = "simulated stimulator"
    can_schedule = True

    def __init__(self, sink: PulseSink, clock: Callable[[], float]) -> None:
        super().__init__()
        self.sink = sink
        self.clock = clock
        self.n_delivered = 0

    def deliver(self, pulse: SafePulse) -> float:
        pulse = self._check(pulse)
        t = max(pulse.t, self.clock())  # now, or when a burst's later pulse is due
        self.sink.schedule_pulse(t, pulse.channel, pulse.amplitude_ma, pulse.pulse_width_us)
        self.n_delivered += 1
        return t

    def stop(self) -> None:
        super().stop()
        cancel = getattr(self.sink, "cancel_pending", None)
        if cancel is not None:
            cancel()  # a burst's pulses still ahead never reach the muscle


class ShadowStimulator(_OnOff):
    """Delivers nothing: records what a controller would have commanded (replays in shadow mode).

    Parameters
    ----------
    clock:
        The replay's clock (the recording's timestamps).
    """

    name = "shadow stimulator"
    can_schedule = True

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__()
        self.clock = clock
        #: (time, channel, amplitude_ma, pulse_width_us) of every pulse that would have been delivered.
        self.commands: list[tuple[float, int, float, float]] = []

    def deliver(self, pulse: SafePulse) -> float:
        pulse = self._check(pulse)
        t = pulse.t  # the time the pulse was due in the recording, not when a fast replay got there
        self.commands.append((t, pulse.channel, pulse.amplitude_ma, pulse.pulse_width_us))
        return t


class LSLStimulator:
    """Publishes pulses on an LSL command stream (see the module docstring for the format).

    Parameters
    ----------
    name:
        Stream name of the command outlet.
    source_id:
        Unique id of the outlet (default: a random one); the simulated device resolves it.
    wait_for_consumer_s:
        :meth:`open` waits this long for a stimulator to connect and raises :class:`StimulatorError`
        if none does, so that no pulse is sent into the void (0 disables the wait).
    """

    def __init__(
        self, name: str = "closedloop-stim", source_id: str | None = None, wait_for_consumer_s: float = 10.0
    ) -> None:
        from acquisition.lsl import LSLPublisher  # LSL lives at the edge; import only when used

        self.name = name
        self.can_schedule = True
        self.source_id = source_id or f"closedloop-stim-{uuid.uuid4().hex[:12]}"
        self.wait_for_consumer_s = wait_for_consumer_s
        info = StreamInfo(name, "StimCommands", 0.0, COMMAND_CHANNELS, ("index", "mA", "us"), self.source_id)
        self._pub = LSLPublisher(info, channel_format="double64")
        self.clock = self._pub._pylsl.local_clock
        self.stopped = False
        self.stopped_at: float | None = None

    def open(self) -> None:
        if self.wait_for_consumer_s > 0 and not self._pub.wait_for_consumers(self.wait_for_consumer_s):
            raise StimulatorError(
                f"no stimulator listened to the LSL command stream {self.name!r} (source_id "
                f"{self.source_id!r}) within {self.wait_for_consumer_s:g} s"
            )
        self.stopped = False

    def deliver(self, pulse: SafePulse) -> float:
        pulse = require_safe(pulse)
        if self.stopped:
            raise StimulatorError("LSL stimulator is stopped; reset the safety layer to restart")
        t = max(pulse.t, self.clock())  # now, or when a burst's later pulse is due
        self._pub.push_sample([float(pulse.channel), pulse.amplitude_ma, pulse.pulse_width_us], t)
        return t

    def send_code(self, code: int, t: float | None = None) -> None:
        """Send a control code (a negative channel, amplitude 0: never a pulse), e.g. -2, a cue for a
        simulated participant to start its task, stamped with LSL time ``t`` (default: now)."""
        if code >= 0:
            raise StimulatorError(f"control codes are negative channels, got {code}")
        self._pub.push_sample([float(code), 0.0, 0.0], self.clock() if t is None else t)

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.stopped_at = time.monotonic()
            try:
                self._pub.push_sample([-1.0, 0.0, 0.0], self.clock())
            except Exception:  # the outlet may already be gone; stopping must not raise
                pass

    def close(self) -> None:
        self.stop()
        self._pub.close()
