"""A fake Hasomed RehaStim 2 on a pseudo-terminal that speaks ScienceMode 2 byte for byte (for tests).

The driver opens :attr:`FakeRehaStim.port` (the pty's slave, a real tty) with pyserial; a thread here reads the
master side, decodes every frame as the protocol defines it (start byte, always-stuffed checksum and length,
byte stuffing, CRC-8 over the stuffed payload, stop byte), answers as the device would, and keeps what a test
needs to check: every decoded command with its arrival time (:attr:`commands`), every protocol violation
(:attr:`errors`, :attr:`numbering_errors`), the stimulation state, the pulses it would have output
(:attr:`pulses`) and what stopped them (:attr:`events`, :attr:`watchdog_stops`).

The encoder, decoder and CRC below are written separately from :mod:`closedloop.drivers.sciencemode` on purpose, so
that a mistake there is not mirrored here. Where the protocol document is silent the fake is at least as strict as
the device can be (see the driver's module docstring for the ambiguities):

- the device sends Init [version] every ``init_interval_s`` until an InitAck echoing the latest Init's packet
  number arrives; commands before that are ignored (recorded as errors, not answered);
- a frame with a wrong checksum, length or stuffing is answered by its command's ack with -1 (transfer error);
  a frame with a second start byte or without the stuffing bytes around the checksum is dropped;
- parameters out of range (including an inter-pulse interval under 8 ms or a main interval under 8 ms other than
  the one-shot code 0) give -2, commands in the wrong mode -3, unknown command ids UnknownCommand;
- the PC's packet numbers must go up by one per command after InitAck (gaps are recorded, not answered);
- no valid packet for ``watchdog_timeout_s`` while connected: output stops ("stopped by watchdog"), all modes
  reset, Init starts again.

Fault injection: :attr:`silent` (keeps listening and acting, never answers), :attr:`corrupt_next_ack` (the next
answer carries a wrong checksum), :attr:`error_replies` (command id -> result code to answer instead of acting),
:attr:`mute_commands` (command ids never answered) and :meth:`stimulation_error` (the device reports e.g. an
electrode error and stops).
"""

from __future__ import annotations

import os
import select
import termios
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["COMMAND_NAMES", "FakeCommand", "FakePulse", "FakeRehaStim"]

_START, _STOP, _ESC, _KEY = 0xF0, 0x0F, 0x81, 0x55

COMMAND_NAMES = {
    1: "Init",
    2: "InitAck",
    3: "UnknownCommand",
    4: "Watchdog",
    10: "GetStimulationMode",
    11: "GetStimulationModeAck",
    12: "GetMotomedMode",
    13: "GetMotomedModeAck",
    30: "InitChannelListMode",
    31: "InitChannelListModeAck",
    32: "StartChannelListMode",
    33: "StartChannelListModeAck",
    34: "StopChannelListMode",
    35: "StopChannelListModeAck",
    36: "SinglePulse",
    37: "SinglePulseAck",
    38: "StimulationError",
}
# MOTOmed commands the device knows (answered "MOTOmed connection error": no MOTOmed attached)
_MOTOMED = {50, 52, 54, 56, 70, 72, 74, 76, 80, 82, 84, 86}
_MODE_NUMBER = {"start": 0, "stopped": 0, "initialised": 1, "running": 2}


def _crc8(data: bytes) -> int:
    """Bitwise CRC-8, polynomial x^8 + x^2 + x + 1, init 0, no reflection, no final XOR."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc << 1) ^ 0x107 if crc & 0x80 else crc << 1
    return crc & 0xFF


def _frame(packet_number: int, command: int, data: list[int]) -> bytes:
    body = bytearray()
    for value in [packet_number, command, *data]:
        value &= 0xFF
        if value in (_START, _STOP, _ESC):
            body += bytes((_ESC, value ^ _KEY))
        else:
            body.append(value)
    return bytes((_START, _ESC, _crc8(bytes(body)) ^ _KEY, _ESC, len(body) ^ _KEY)) + bytes(body) + bytes((_STOP,))


def _s8(byte: int) -> int:
    return byte - 256 if byte >= 128 else byte


@dataclass(frozen=True)
class FakeCommand:
    """A frame the fake received from the PC.

    ``data`` is de-stuffed; ``raw`` is the frame as received; ``problem`` says why it was rejected (None if it
    was valid); ``answer`` is the result code sent back (None: no answer).
    """

    t: float
    packet_number: int
    command: int
    data: bytes
    raw: bytes
    problem: str | None
    answer: int | None

    @property
    def name(self) -> str:
        return COMMAND_NAMES.get(self.command, f"command {self.command}")


@dataclass(frozen=True)
class FakePulse:
    """A pulse the device would have output: ``device_channel`` counts 1..8 as on the device."""

    t: float
    device_channel: int
    current_ma: int
    pulse_width_us: int


class FakeRehaStim:
    """The fake device (see the module docstring). Use as a context manager, or :meth:`start` / :meth:`close`.

    Parameters
    ----------
    version:
        Protocol version byte sent in Init.
    init_interval_s:
        Init repetition while not connected (the device: 0.5 s).
    watchdog_timeout_s:
        Connection watchdog (the device: 1.2 s).
    silent:
        Never transmit (also settable at any time).
    """

    def __init__(
        self,
        *,
        version: int = 1,
        init_interval_s: float = 0.5,
        watchdog_timeout_s: float = 1.2,
        silent: bool = False,
    ) -> None:
        self.version = version
        self.init_interval_s = init_interval_s
        self.watchdog_timeout_s = watchdog_timeout_s
        self.silent = silent
        self.corrupt_next_ack = False
        self.error_replies: dict[int, int] = {}
        self.mute_commands: set[int] = set()
        self.commands: list[FakeCommand] = []
        self.errors: list[tuple[float, str]] = []
        self.numbering_errors: list[str] = []
        self.events: list[tuple[float, str]] = []
        self.watchdog_stops: list[float] = []
        self.watchdog_resets: list[float] = []
        self.pulses: list[FakePulse] = []
        self.sent: list[tuple[float, bytes]] = []
        self.inits_sent: list[tuple[float, int]] = []
        self.connected = False
        self.state = "start"  # start, initialised, running, stopped (start mode after a stop)
        #: the stimulation state a new connection starts in (the device resets to "start" on its watchdog)
        self.state_on_connect = "start"
        self.active_channels: list[int] = []
        self.main_interval_code: int | None = None
        self.inter_pulse_interval_code: int | None = None
        self.last_valid_t: float | None = None
        self._lock = threading.RLock()
        self._buf: bytearray | None = None
        self._stray = 0
        self._own_number = 0
        self._last_init_number: int | None = None
        self._last_pc_number: int | None = None
        self._next_init = 0.0
        self._channel_params: list[tuple[int, int, int]] = []
        self._next_pass: float | None = None
        self._closing = threading.Event()
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line editing, all 256 byte values pass
        os.set_blocking(self._master, False)
        self.port = os.ttyname(self._slave)
        self._thread = threading.Thread(target=self._run, name="fake-rehastim", daemon=True)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeRehaStim:
        self._next_init = time.monotonic()
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the device thread and close the pty (the port then fails for the driver, like a pulled cable)."""
        if self._closing.is_set():
            return
        self._closing.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> FakeRehaStim:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset_line(self) -> None:
        """Put the slave back to raw 38400 baud, no parity, so that the port can be opened again.

        (Some kernels refuse to set parity on a pty again without a change of speed.)
        """
        attrs = termios.tcgetattr(self._slave)
        attrs[2] = (attrs[2] & ~(termios.CBAUD | termios.PARENB | termios.PARODD)) | termios.B38400
        attrs[4] = attrs[5] = termios.B38400
        termios.tcsetattr(self._slave, termios.TCSANOW, attrs)

    # ------------------------------------------------------------------ views for tests

    @property
    def output_on(self) -> bool:
        """True while a channel list is started (each update would make pulses)."""
        return self.connected and self.state == "running"

    def commands_named(self, name: str) -> list[FakeCommand]:
        with self._lock:
            return [c for c in self.commands if c.name == name]

    def wait_for(self, predicate: Callable[[], object], timeout: float = 2.0) -> bool:
        """Poll ``predicate`` until it is true or ``timeout`` (s) passes; return its last truth value."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if predicate():
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.002)

    def stimulation_error(self, code: int) -> None:
        """The device reports StimulationError ``code`` (-1 emergency switch, -2 electrode, -3 module) and stops."""
        with self._lock:
            now = time.monotonic()
            if self.state in ("initialised", "running"):
                self._event(now, f"stopped by stimulation error {code}")
            self.state = "stopped"
            self._transmit(self._own_packet(38, [code]), now, ack=False)

    # ------------------------------------------------------------------ device thread

    def _run(self) -> None:
        while not self._closing.is_set():
            try:
                ready, _, _ = select.select([self._master], [], [], 0.002)
            except (OSError, ValueError):
                return
            chunk = b""
            if ready:
                try:
                    chunk = os.read(self._master, 4096)
                except BlockingIOError:
                    chunk = b""
                except OSError:
                    return
            now = time.monotonic()
            with self._lock:
                for byte in chunk:  # byte by byte, as a UART interrupt would
                    self._feed(byte, now)
                self._tick(now)

    def _tick(self, now: float) -> None:
        if not self.connected:
            if now >= self._next_init:
                self._next_init = now + self.init_interval_s
                number = self._own_packet_number()
                self._last_init_number = number
                self.inits_sent.append((now, number))
                self._transmit(_frame(number, 1, [self.version]), now, ack=False)
            return
        if self.last_valid_t is not None and now - self.last_valid_t > self.watchdog_timeout_s:
            if self.state in ("initialised", "running"):
                self.watchdog_stops.append(now)
                self._event(now, "stopped by watchdog")
            self.watchdog_resets.append(now)
            self._event(now, "connection reset by watchdog")
            self.connected = False
            self.state = "stopped"
            self._next_pass = None
            self._next_init = now  # the device sends Init again at once
            return
        if self._next_pass is not None and self.state == "running" and now >= self._next_pass:
            self._output_pass(self._next_pass)
            self._next_pass += (self.main_interval_code or 0) * 0.5e-3 + 1e-3

    def _feed(self, byte: int, now: float) -> None:
        buf = self._buf
        if buf is None:
            if byte == _START:
                self._buf = bytearray((byte,))
            else:
                self._stray += 1
                self.errors.append((now, f"byte 0x{byte:02X} outside a frame"))
            return
        n = len(buf)
        if n in (1, 3):  # the stuffing byte before the checksum and before the length
            if byte != _ESC:
                self.errors.append((now, f"frame error: byte {n} is 0x{byte:02X}, expected 0x81; frame dropped"))
                self._buf = bytearray((byte,)) if byte == _START else None
                return
            buf.append(byte)
        elif n in (2, 4):  # stuffed checksum / length: any value, even F0 or 0F
            buf.append(byte)
        elif byte == _START:
            self.errors.append((now, "frame error: second start byte; bytes before it rejected"))
            self._buf = bytearray((byte,))
        elif byte == _STOP:
            buf.append(byte)
            self._buf = None
            self._packet(bytes(buf), now)
        else:
            buf.append(byte)
            if len(buf) > 5 + 2 * 63:
                self.errors.append((now, "frame error: no stop byte; frame dropped"))
                self._buf = None

    def _packet(self, raw: bytes, now: float) -> None:
        checksum, length, body = raw[2] ^ _KEY, raw[4] ^ _KEY, raw[5:-1]
        payload = bytearray()
        escaped = False
        for byte in body:
            if escaped:
                payload.append(byte ^ _KEY)
                escaped = False
            elif byte == _ESC:
                escaped = True
            else:
                payload.append(byte)
        problem = None
        if len(body) != length:
            problem = f"data length error: header {length}, transferred {len(body)}"
        elif _crc8(body) != checksum:
            problem = f"checksum error: header 0x{checksum:02X}, computed 0x{_crc8(body):02X}"
        elif escaped:
            problem = "stuffing error: payload ends with the stuffing byte"
        if len(payload) < 2:
            self.errors.append((now, f"packet too short: {raw.hex(' ')}"))
            return
        number, command, data = payload[0], payload[1], bytes(payload[2:])
        answer = None
        if problem is not None:
            self.errors.append((now, f"{COMMAND_NAMES.get(command, command)}: {problem}"))
            if self.connected and command not in (2, 4) and command + 1 in COMMAND_NAMES:
                answer = -1
                self._answer(number, command + 1, [answer], now)
        else:
            self.last_valid_t = now if self.connected else self.last_valid_t
            answer = self._dispatch(number, command, data, now)
        self.commands.append(FakeCommand(now, number, command, data, raw, problem, answer))

    def _dispatch(self, number: int, command: int, data: bytes, now: float) -> int | None:
        """Act on a valid packet; return the result code answered (None if nothing was answered)."""
        if not self.connected:
            if command == 2:
                if number != self._last_init_number or len(data) != 1:
                    self.errors.append(
                        (now, f"InitAck {number} {data.hex()} does not answer Init {self._last_init_number}")
                    )
                    return None
                if _s8(data[0]) == 0:
                    self.connected = True
                    self.state = self.state_on_connect
                    self.last_valid_t = now
                    self._last_pc_number = None
                    self._event(now, "connected")
                else:
                    self._event(now, f"PC refused the connection ({_s8(data[0])})")
                return None
            self.errors.append((now, f"{COMMAND_NAMES.get(command, command)} before InitAck: ignored"))
            return None
        if command == 2:
            self.errors.append((now, "InitAck while connected: ignored"))
            return None
        if self._last_pc_number is not None and number != (self._last_pc_number + 1) % 256:
            self.numbering_errors.append(f"packet {number} after {self._last_pc_number}")
        self._last_pc_number = number
        if command == 4:  # Watchdog: no answer
            if data:
                self.errors.append((now, "Watchdog with data"))
            return None
        if command in self.mute_commands:
            return None
        if command in self.error_replies:
            code = self.error_replies[command]
            self._answer(number, command + 1, [code], now)
            return code
        if command == 10:
            code = -2 if data else 0
            self._answer(number, 11, [code] if code else [0, _MODE_NUMBER[self.state]], now)
            return code
        if command == 12:
            self._answer(number, 13, [0, -1], now)  # MOTOmed connection error
            return 0
        if command in _MOTOMED:
            self._answer(number, command + 1, [-4], now)
            return -4
        handler = {30: self._init_channel_list, 32: self._start_channel_list, 34: self._stop, 36: self._single_pulse}
        if command not in handler:
            self._answer(number, 3, [command], now)  # UnknownCommand
            return None
        code = handler[command](data, now)
        self._answer(number, command + 1, [code], now)
        return code

    def _init_channel_list(self, data: bytes, now: float) -> int:
        if self.state not in ("start", "stopped"):
            return -3
        if len(data) != 7:
            return -2
        low_factor, active, low_channels, ipi, main_msb, main_lsb, execution = data
        main = main_msb * 256 + main_lsb
        if (
            low_factor > 7
            or active == 0
            or low_channels & ~active
            or ipi < 13  # 8 ms minimum in the current software version
            or main > 2048
            or 0 < main < 14  # continuous mode: >= 8 ms; 0 is the one-shot mode
            or execution != 0  # 1 ("as fast as possible") is not implemented
        ):
            return -2
        self.active_channels = [bit + 1 for bit in range(8) if active >> bit & 1]
        self.main_interval_code = main
        self.inter_pulse_interval_code = ipi
        self.state = "initialised"
        self._event(now, f"initialised channels {self.active_channels}, main interval code {main}")
        return 0

    def _start_channel_list(self, data: bytes, now: float) -> int:
        if self.state not in ("initialised", "running"):
            return -3
        if len(data) != 4 * len(self.active_channels):
            return -2
        params = []
        for i in range(len(self.active_channels)):
            mode, msb, lsb, current = data[4 * i : 4 * i + 4]
            width = msb * 256 + lsb
            if mode > 2 or width > 500 or current > 130:
                return -2
            params.append((mode, width, current))
        self._channel_params = params
        if self.state != "running":
            self._event(now, "stimulation started")
        self.state = "running"
        if self.main_interval_code == 0:
            self._output_pass(now)  # one-shot channel list mode: one pass per update
        elif self._next_pass is None:
            self._next_pass = now
        return 0

    def _output_pass(self, t: float) -> None:
        ipi = (self.inter_pulse_interval_code or 0) * 0.5e-3 + 1.5e-3
        for channel, (mode, width, current) in zip(self.active_channels, self._channel_params, strict=True):
            if current > 0 and width > 0:
                for k in range(mode + 1):
                    self.pulses.append(FakePulse(t + k * ipi, channel, current, max(width, 20)))

    def _stop(self, data: bytes, now: float) -> int:
        if data:
            return -2
        if self.state in ("initialised", "running"):
            self._event(now, "stopped by StopChannelListMode")
        self.state = "stopped"
        self._next_pass = None
        return 0

    def _single_pulse(self, data: bytes, now: float) -> int:
        if self.state not in ("start", "stopped"):
            return -3
        if len(data) != 4:
            return -2
        channel, msb, lsb, current = data
        width = msb * 256 + lsb
        if channel > 7 or width > 500 or current > 130:
            return -2
        if current > 0 and width > 0:
            self.pulses.append(FakePulse(now, channel + 1, current, max(width, 20)))  # channel 0 = device channel 1
        return 0

    # ------------------------------------------------------------------ transmit

    def _own_packet_number(self) -> int:
        number = self._own_number
        self._own_number = (number + 1) % 256
        return number

    def _own_packet(self, command: int, data: list[int]) -> bytes:
        return _frame(self._own_packet_number(), command, data)

    def _answer(self, number: int, command: int, data: list[int], now: float) -> None:
        self._transmit(_frame(number, command, data), now, ack=True)

    def _transmit(self, frame: bytes, now: float, *, ack: bool) -> None:
        if ack and self.corrupt_next_ack:
            self.corrupt_next_ack = False
            frame = frame[:2] + bytes((frame[2] ^ 0x01,)) + frame[3:]
            self._event(now, f"corrupted the checksum of {frame.hex(' ')}")
        if self.silent:
            return
        self.sent.append((now, frame))
        try:
            os.write(self._master, frame)
        except OSError as exc:  # nobody reading and the pty buffer full, or the pty closed
            self.errors.append((now, f"could not transmit: {exc}"))

    def _event(self, now: float, what: str) -> None:
        self.events.append((now, what))
