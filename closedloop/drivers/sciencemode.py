"""Hasomed RehaStim 2 over the ScienceMode 2 serial protocol, pulse by pulse.

Sources
-------
[S] Hasomed, "ScienceMode2 - Description and Protocol", version 1.24, 2012-12-12: the PDF
    ``02_Description Protocol/Science_Mode2_Description_Protocol_20121212.pdf`` in github:ScienceMode/ScienceMode2
    (its README.md, lines 8-15, gives the output resolution and latency). Cited as [S] section / table / page.
[P] github:s2mLab/pyScienceMode (commit 66b8454), an implementation used on real devices. Cited as
    [P] file:lines; ``utils.py`` etc. are under ``pysciencemode/``.
[C] github:MartinScharrer/crccheck ``crccheck/crc.py``:320-330, 945-961: ``Crc8`` (used by [P]) is CRC-8/SMBUS.

Protocol summary
----------------
=====================  ==============================================================================================
What                   ScienceMode 2 on the RehaStim 2 (where it was learnt)
=====================  ==============================================================================================
serial line            460800 baud, 8 data bits, even parity, 1 stop bit, no flow control.
                       ([S] 2.1 table 4 p.9; [P] sciencemode.py:93-100)
frame                  ``F0 | 81, checksum ^ 55 | 81, length ^ 55 | stuffed(packet number, command, data) | 0F``.
                       ([S] 2.2 tables 5-6 p.9-10; [P] utils.py:181-206)
byte stuffing          F0 (start), 0F (stop) and 81 (stuffing byte) inside the payload are sent as
                       ``81, value ^ 55`` (55 is the stuffing key). ([S] 2.2 p.9; [P] utils.py:209-256)
checksum, length       CRC-8 with polynomial 0x07, init 0x00, not reflected, no final XOR (CRC-8/SMBUS), over the
                       *stuffed* payload (packet number to last data byte); the length is that payload's byte
                       count; both are *always* sent stuffed. ([S] 2.2 p.9 names only the polynomial;
                       [P] utils.py:193-195; [C])
packet number          0..255; the PC adds one per command and the device echoes it in the ack; packets the
                       device starts (Init, StimulationError) carry its own counter. ([S] 2.2 p.10;
                       [P] sciencemode.py:134, 565)
command ids            Init 1, InitAck 2, UnknownCommand 3, Watchdog 4, GetStimulationMode 10 (ack 11),
                       InitChannelListMode 30 (31), StartChannelListMode 32 (33), StopChannelListMode 34 (35),
                       SinglePulse 36 (37), StimulationError 38. ([S] 3.1-3.3 p.11; [P] enums.py:4-19)
connection             The *device* sends Init [protocol version] every 500 ms until the PC answers InitAck [0]
                       echoing Init's packet number (-5 would refuse the version). ([S] 2.3 table 7, 4.1 p.15;
                       [P] rehastim2_interface.py:69-76, sciencemode.py:570-586)
device watchdog        The PC must send a valid packet at least every 1200 ms (Watchdog [4] is one; it has no
                       ack); otherwise the device stops stimulation, resets all modes and sends Init again.
                       ([S] 2.3 table 7 p.10, 5.2 p.30-31; [P] sciencemode.py:522-529, 557-558)
stimulation modes      start --InitChannelListMode--> initialised --StartChannelListMode--> started
                       (StartChannelListMode again updates); StopChannelListMode --> start; SinglePulse only in
                       start mode. ([S] fig. 4 p.14)
GetStimulationMode     ack [result, mode]: mode 0 start, 1 initialised, 2 started; no mode byte when
                       result != 0. ([S] 4.2 p.16; [P] acks.py:328-347)
InitChannelListMode    [low-frequency factor 0..7, active channels (bit 0 = channel 1), low-frequency channels,
                       inter-pulse interval code (n * 0.5 ms + 1.5 ms, >= 8 ms), main interval code MSB, LSB
                       (n * 0.5 ms + 1 ms; n = 0: one-shot channel list mode), channel execution 0].
                       ([S] 4.3 p.17-18; [P] rehastim2_interface.py:161-243, utils.py:124-157)
StartChannelListMode   For each active channel in increasing order: [mode 0 single / 1 doublet / 2 triplet,
                       pulse width MSB, LSB (0..500 us; 1..19 us become 20 us), current (0..130 mA)].
                       ([S] 4.3 p.18; [P] rehastim2_interface.py:183-197, 245-269)
acks and error codes   [result]: 0 ok, -1 transfer error (checksum or length), -2 parameter error, -3 wrong mode,
                       -5 incompatible version, -8 busy. A corrupt command is answered by its ack with -1, an
                       unknown one by UnknownCommand [command]. ([S] 5.1 p.29, 5.2 p.30;
                       [P] acks.py:35-74, 350-398)
StimulationError       Device to PC [code]: -1 emergency switch activated / not connected, -2 electrode error,
                       -3 stimulation module error; the device stops and returns to start mode.
                       ([S] 1.3 p.6, 4.3 p.20; [P] acks.py:35-53)
timing                 Answer within 100 ms (average < 20 ms); command-to-pulse latency 10-24 ms.
                       ([S] 2.3 table 7; README.md:15)
output resolution      Current in 2 mA steps (0-126 mA at 1 kOhm), pulse width in 1 us steps.
                       (README.md:8-9; user manual, "0-130 mA in 65 steps")
=====================  ==============================================================================================

How pulses are made: the one-shot channel list mode
---------------------------------------------------
The RehaStim 2 offers three ways to stimulate ([S] 1.3 p.4-6): the continuous channel list mode (the device
repeats the list every main interval: it cannot make exactly one pulse), the *one-shot* channel list mode
(InitChannelListMode with main interval code 0; then every StartChannelListMode makes one pass over the list,
i.e. exactly one pulse per active channel with a non-zero current) and the SinglePulse command. This driver uses
the one-shot channel list mode: one StartChannelListMode per pulse, the pulsed channel carrying its current and
width and every other active channel 0 mA. Why not SinglePulse: pyScienceMode never sends it (it only lists its
id), so nothing we can read shows it working on a device, and its channel field is documented as "Range [0, 7]"
while every other channel field counts 1..8 ([S] 4.3 p.19): a guess there would stimulate the wrong muscle. The
channel list frames, channel bit mask and numbering are those pyScienceMode uses on real devices, and the list
mode has a defined "started" state that StopChannelListMode and the device watchdog end.

Keep-alive: the protocol's Watchdog command has no answer, so it cannot tell a dead device from a live one. Any
valid command resets the device watchdog ([S] table 7), so when nothing has been sent for ``keepalive_s`` the
driver sends GetStimulationMode: it feeds the watchdog, its ack proves the device is alive, and its mode byte
shows whether the device left the channel list mode on its own.

Where the references are ambiguous, and what this driver assumes
----------------------------------------------------------------
1. Which bytes are stuffed. [S] 2.2: every constant of table 6 "except the stuffing key", i.e. F0, 0F, 81;
   [P] utils.py:224 also stuffs 55 and 0A. Sent: the three of [S]. Received: any ``81, x`` is read as ``x ^ 55``.
2. Packet number and command. [P] utils.py:187-188, 236-239 XOR them *without* the 81 escape (so packet numbers
   10, 15, 85, 129 and 240 go out altered; harmless there only because the device merely echoes the number and
   [P] never checks the echo); [S] 2.2 says the checksum is computed "from the stuffed packet number": here they
   are stuffed like the data, and echoes are checked.
3. The always-stuffed checksum can itself be F0 or 0F (checksum A5 or 5A); [P] sciencemode.py:618-623 skips stop
   bytes before index 8 for that reason. Frames are parsed by position: bytes 1-4 are header, never delimiters.
4. Byte order. [S] 2.2 p.10 says "little endian", but the field tables (4.3) and [P] rehastim2_interface.py:
   172-176, 190-192 put MSB first: MSB first it is.
5. The CRC. [S] names only the polynomial ("CRC-8-CCITT", 0x07; the ITU variant of that name XORs the result
   with 0x55); [P] uses crccheck's Crc8 = CRC-8/SMBUS, init 0, xorout 0 ([C]), which works on devices: that one.
6. StimulationError. [S] 4.3 p.20 lists its command byte as "StartChannelListModeAck" (a copy slip); [S] 3.3 and
   [P] enums.py:19 say 38: 38.
7. Keep-alive period. [S] table 7: 1200 ms; [P] sends every 0.8 s (sciencemode.py:527-529) while its docstring
   says 500 ms. Default here 0.4 s; at most 0.6 s is accepted.
8. Current resolution. The protocol byte is whole mA, 0..130 ([S] 4.3; [P] truncates with ``int()``,
   rehastim2_interface.py:193), but the output stage works in 2 mA steps (README.md:8; user manual "0-130 mA in
   65 steps"), rounding in an undocumented direction. Only even whole mA values are sent; anything else is
   refused, never rounded. (So configure ``SafetyLimits.max_step_ma`` and ``max_amplitude_ma`` as multiples of
   2 mA; an amplitude clamped for charge is generally off the grid and is refused.)
9. Pulse widths 1..19 us are silently made 20 us by the device ([S] 4.3): refused here.
10. One-shot mode is initialised with main interval code 0 ([S] 4.3 p.17; [S] 1.3 p.6 "main stimulation
    interval = 1"); the note "minimum main stimulation interval is 8 ms" is taken to concern the continuous mode.
    pyScienceMode only uses the continuous mode (its check allows 8..1025 ms, utils.py:26-41): the one-shot mode
    is documented but not exercised by any code we could read. Verify on the device before experiments.
11. Updates sent faster than the inter-pulse interval "might be overwritten" ([S] 1.3 p.6); the interval is set to
    its documented minimum, 8 ms (code 13; [P] sends code 1, i.e. 2 ms, rehastim2_interface.py:51, 165), and
    pulses closer than 8 ms are refused.
12. The value of Init's version byte is not given ([P] declares 1 and never checks it): any is accepted and kept
    in :attr:`ScienceModeStimulator.device_version`.
13. Where the PC's packet counter starts, and whether the device checks it, is not said ([P] restarts it at 0
    after every stop, rehastim2_interface.py:374). Here: 0 after InitAck, +1 per command (keep-alives included).
14. Busy (-8) means "processing the last command; wait for the response" ([S] 5.1). A pulse sent while a
    keep-alive is being answered may meet it; since nothing is output then, a busy answer to a pulse is counted in
    :attr:`ScienceModeStimulator.n_dropped` and :attr:`ScienceModeStimulator.problems`, not treated as a failure.
15. StopChannelListMode in start mode is not drawn in [S] fig. 4, but its ack knows no wrong-mode error: it is sent
    in any mode.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from closedloop.errors import ConfigError, StimulatorError
from closedloop.safety import SafePulse, require_safe

__all__ = [
    "CURRENT_MAX_MA",
    "CURRENT_STEP_MA",
    "PULSE_WIDTH_MAX_US",
    "PULSE_WIDTH_MIN_US",
    "RESULT_MEANINGS",
    "STIMULATION_ERRORS",
    "WATCHDOG_TIMEOUT_S",
    "Command",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "ScienceModeStimulator",
    "crc8",
    "encode_frame",
    "stuff",
]

START_BYTE = 0xF0
STOP_BYTE = 0x0F
STUFFING_BYTE = 0x81
STUFFING_KEY = 0x55
#: Bytes that must be escaped inside a frame ([S] 2.2: the constants of table 6 except the stuffing key).
STUFFED_VALUES = frozenset({START_BYTE, STOP_BYTE, STUFFING_BYTE})
#: Longest stuffed payload accepted: packet number, command and < 61 data bytes, every byte escaped.
MAX_STUFFED_PAYLOAD = 2 * (2 + 61)

#: The device stops stimulating when it gets no valid packet for this long (s).
WATCHDOG_TIMEOUT_S = 1.2
#: The device repeats Init this often until it gets an InitAck (s).
INIT_REPETITION_S = 0.5
#: The device answers a command within this time (s).
MAX_RESPONSE_TIME_S = 0.1

CURRENT_MAX_MA = 130
CURRENT_STEP_MA = 2
PULSE_WIDTH_MIN_US = 20
PULSE_WIDTH_MAX_US = 500
#: Inter-pulse interval code sent in InitChannelListMode: 13 * 0.5 ms + 1.5 ms = 8 ms, the documented minimum.
INTER_PULSE_INTERVAL_CODE = 13
#: Pulses closer than this (s) could overwrite each other in the one-shot channel list mode.
MIN_PULSE_INTERVAL_S = 0.008

_READ_POLL_S = 0.02  # the reader thread wakes at least this often to check for overdue acks
_DEVICE = "RehaStim 2"


class Command(IntEnum):
    """ScienceMode 2 command ids used with the stimulation part of the RehaStim 2 ([S] 3.1-3.3)."""

    INIT = 1
    INIT_ACK = 2
    UNKNOWN_COMMAND = 3
    WATCHDOG = 4
    GET_STIMULATION_MODE = 10
    GET_STIMULATION_MODE_ACK = 11
    INIT_CHANNEL_LIST_MODE = 30
    INIT_CHANNEL_LIST_MODE_ACK = 31
    START_CHANNEL_LIST_MODE = 32
    START_CHANNEL_LIST_MODE_ACK = 33
    STOP_CHANNEL_LIST_MODE = 34
    STOP_CHANNEL_LIST_MODE_ACK = 35
    SINGLE_PULSE = 36
    SINGLE_PULSE_ACK = 37
    STIMULATION_ERROR = 38

    @property
    def label(self) -> str:
        """The name the protocol document uses, e.g. ``StartChannelListMode``."""
        return "".join(part.capitalize() for part in self.name.split("_"))


def _label(command: int) -> str:
    try:
        return Command(command).label
    except ValueError:
        return f"command {command}"


#: Result codes of acks ([S] 5.1).
RESULT_MEANINGS = {
    0: "no error",
    -1: "transfer error (the device got a wrong checksum or data length)",
    -2: "parameter error (parameters out of range, or too many or too few)",
    -3: "wrong mode error (the command cannot be processed in the current mode)",
    -4: "MOTOmed connection error",
    -5: "incompatible protocol version",
    -6: "invalid MOTOmed trainer",
    -7: "MOTOmed busy error",
    -8: "busy error (the device is still processing the previous command)",
}

#: Codes of the StimulationError packet ([S] 4.3 p.20).
STIMULATION_ERRORS = {
    -1: "emergency switch activated or not connected",
    -2: "electrode error",
    -3: "stimulation module error",
}

#: Modes in GetStimulationModeAck ([S] 4.2).
STIMULATION_MODES = {0: "start mode", 1: "stimulation initialised", 2: "stimulation started"}


def _result_text(code: int) -> str:
    return f"error {code}, {RESULT_MEANINGS.get(code, 'an undocumented error code')}"


def _signed(byte: int) -> int:
    return byte - 256 if byte > 127 else byte


def _crc8_table() -> tuple[int, ...]:
    table = []
    for value in range(256):
        crc = value
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
        table.append(crc)
    return tuple(table)


_CRC8_TABLE = _crc8_table()


def crc8(data: bytes | bytearray | Iterable[int]) -> int:
    """CRC-8/SMBUS (polynomial 0x07, init 0, no reflection, no final XOR) of ``data``, as ScienceMode 2 uses it."""
    crc = 0
    for byte in data:
        crc = _CRC8_TABLE[crc ^ byte]
    return crc


def stuff(values: Iterable[int]) -> bytes:
    """Escape F0, 0F and 81 as ``81, value ^ 0x55``; other bytes pass unchanged."""
    out = bytearray()
    for value in values:
        if not 0 <= value <= 255:
            raise ValueError(f"not a byte: {value}")
        if value in STUFFED_VALUES:
            out += bytes((STUFFING_BYTE, value ^ STUFFING_KEY))
        else:
            out.append(value)
    return bytes(out)


def encode_frame(packet_number: int, command: int, data: bytes | Iterable[int] = b"") -> bytes:
    """One ScienceMode 2 frame: start byte, stuffed checksum and length, stuffed payload, stop byte.

    Parameters
    ----------
    packet_number:
        0..255.
    command:
        Command id (:class:`Command`).
    data:
        Command data bytes, not yet stuffed; signed values must already be two's complement (0..255).
    """
    payload = stuff([packet_number, command, *bytes(data)])
    if len(payload) > MAX_STUFFED_PAYLOAD:
        raise ValueError(f"ScienceMode 2 payload too long: {len(payload)} stuffed bytes")
    return (
        bytes((START_BYTE, STUFFING_BYTE, crc8(payload) ^ STUFFING_KEY, STUFFING_BYTE, len(payload) ^ STUFFING_KEY))
        + payload
        + bytes((STOP_BYTE,))
    )


@dataclass(frozen=True)
class Frame:
    """A received frame that passed every check; ``data`` is de-stuffed; ``raw`` is the frame as received."""

    packet_number: int
    command: int
    data: bytes
    raw: bytes


@dataclass(frozen=True)
class FrameError:
    """A received frame that failed a check (``reason`` says which); ``raw`` is what was received."""

    reason: str
    raw: bytes


class FrameDecoder:
    """Turns a byte stream into :class:`Frame` and :class:`FrameError` objects.

    The header (stuffing byte, checksum, stuffing byte, length) is read by position, since the always-stuffed
    checksum may equal the start or stop byte; after it, a stop byte ends the frame and a start byte is a frame
    error that begins a new frame. Bytes outside frames are counted in :attr:`stray_bytes`.
    """

    def __init__(self) -> None:
        self._buf: bytearray | None = None
        self.stray_bytes = 0

    def feed(self, chunk: bytes) -> list[Frame | FrameError]:
        """Consume ``chunk``; return the frames (and errors) it completed, in order."""
        out: list[Frame | FrameError] = []
        for byte in chunk:
            buf = self._buf
            if buf is None:
                if byte == START_BYTE:
                    self._buf = bytearray((byte,))
                else:
                    self.stray_bytes += 1
                continue
            n = len(buf)
            if n in (1, 3):
                if byte != STUFFING_BYTE:
                    out.append(FrameError(f"byte {n} is 0x{byte:02X}, not the stuffing byte 0x81", bytes(buf)))
                    self._buf = bytearray((byte,)) if byte == START_BYTE else None
                    continue
                buf.append(byte)
            elif n in (2, 4):
                buf.append(byte)
            elif byte == START_BYTE:
                out.append(FrameError("a second start byte inside the frame", bytes(buf)))
                self._buf = bytearray((byte,))
            elif byte == STOP_BYTE:
                buf.append(byte)
                self._buf = None
                out.append(self._check(bytes(buf)))
            else:
                buf.append(byte)
                if len(buf) > 5 + MAX_STUFFED_PAYLOAD:
                    out.append(FrameError("frame too long (no stop byte)", bytes(buf)))
                    self._buf = None
        return out

    @staticmethod
    def _check(raw: bytes) -> Frame | FrameError:
        checksum, length, body = raw[2] ^ STUFFING_KEY, raw[4] ^ STUFFING_KEY, raw[5:-1]
        if len(body) != length:
            return FrameError(f"data length error: the header says {length} bytes, {len(body)} arrived", raw)
        computed = crc8(body)
        if computed != checksum:
            return FrameError(f"checksum error: the header says 0x{checksum:02X}, the bytes give 0x{computed:02X}", raw)
        payload = bytearray()
        escaped = False
        for byte in body:
            if escaped:
                payload.append(byte ^ STUFFING_KEY)
                escaped = False
            elif byte == STUFFING_BYTE:
                escaped = True
            else:
                payload.append(byte)
        if escaped:
            return FrameError("stuffing error: the payload ends with the stuffing byte", raw)
        if len(payload) < 2:
            return FrameError("packet too short (no packet number and command)", raw)
        return Frame(payload[0], payload[1], bytes(payload[2:]), raw)


@dataclass
class _Pending:
    """A command sent and waiting for its ack."""

    packet_number: int
    command: Command
    t_sent: float
    waited_for: bool  # a caller (open()) waits for it and handles the timeout itself
    done: threading.Event = field(default_factory=threading.Event)
    ack: Frame | None = None


def _default_serial_factory(port: str, **settings: Any) -> Any:
    try:
        import serial  # pyserial: an optional extra
    except ImportError as exc:
        raise StimulatorError("the ScienceMode driver needs pyserial: pip install 'closedloop[sciencemode]'") from exc
    return serial.Serial(port, **settings)


class ScienceModeStimulator:
    """Hasomed RehaStim 2 on a serial port, one pulse per :meth:`deliver` (see the module docstring).

    The device's resolution is advertised (``amplitude_step_ma``, ``pulse_width_step_us``,
    ``min_interval_s``): the safety layer rounds every pulse *down* to it, so what it checked is what the
    device outputs; this driver still refuses anything off the grid.

    Parameters
    ----------
    port:
        Serial port of the device (``/dev/ttyUSB0``, ``COM3``).
    channels:
        closedloop channels (0..7, i.e. device channels 1..8) to initialise; pulses on other channels are refused.
    keepalive_s:
        When nothing has been sent for this long (s), a GetStimulationMode keeps the device's 1.2 s watchdog fed
        and checks that the device answers. At most 0.6 s.
    ack_timeout_s:
        A command not acknowledged within this time (s) means the device stopped answering: the driver fails
        and turns output off. The device answers within 0.1 s.
    baudrate:
        Line speed (baud); the RehaStim 2 speaks 460800.
    serial_factory:
        ``factory(port, baudrate=..., bytesize=8, parity="E", stopbits=1, timeout=..., write_timeout=...)`` returning
        a pyserial-like object (``read``, ``write``, ``in_waiting``, ``reset_input_buffer``, ``close``), e.g.
        ``serial.Serial``. Default: pyserial's ``serial.Serial``.
    init_timeout_s:
        :meth:`open` waits this long (s) for the device's Init (sent every 0.5 s while it is not connected, and
        again once its watchdog has expired after a previous session).

    Attributes
    ----------
    failure:
        Why the driver failed (the message :meth:`deliver` raises), or None.
    problems:
        Everything that went wrong, including what :meth:`stop` could not do (it never raises).
    device_version:
        The protocol version byte of the device's Init.
    n_delivered, n_dropped:
        Pulse commands sent; pulses the device answered "busy" to (not output).
    stopped_at:
        ``time.monotonic()`` (the LSL clock on Linux) when :meth:`stop` turned output off, or None.
    stop_confirmed:
        Set when the device acknowledged StopChannelListMode.
    """

    #: Output resolution of the device (the safety layer rounds down to it).
    amplitude_step_ma = 2.0
    pulse_width_step_us = 1.0
    #: Shortest time between two pulses this driver sends (s).
    min_interval_s = MIN_PULSE_INTERVAL_S

    def __init__(
        self,
        port: str,
        *,
        channels: Iterable[int] = (0,),
        keepalive_s: float = 0.4,
        ack_timeout_s: float = 0.5,
        baudrate: int = 460800,
        serial_factory: Callable[..., Any] | None = None,
        init_timeout_s: float = 2.5,
    ) -> None:
        try:
            chans = tuple(sorted({int(c) for c in channels}))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"channels = {channels!r}: need channel numbers 0..7") from exc
        if not chans or chans[0] < 0 or chans[-1] > 7:
            raise ConfigError(f"channels = {channels!r}: the RehaStim 2 has channels 0..7 (device channels 1..8)")
        for key, value, low, high in (
            ("keepalive_s", keepalive_s, 0.0, WATCHDOG_TIMEOUT_S / 2),
            ("ack_timeout_s", ack_timeout_s, 0.0, 5.0),
            ("init_timeout_s", init_timeout_s, 0.0, 60.0),
        ):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and low < value <= high):
                raise ConfigError(f"{key} = {value!r} not allowed: must be > {low:g} and <= {high:g} s")
        if not (isinstance(baudrate, int) and baudrate > 0):
            raise ConfigError(f"baudrate = {baudrate!r}: need a positive integer (the RehaStim 2 uses 460800)")
        self.port = port
        self.channels = chans
        self.keepalive_s = float(keepalive_s)
        self.ack_timeout_s = float(ack_timeout_s)
        self.init_timeout_s = float(init_timeout_s)
        self.baudrate = baudrate
        self.serial_factory = serial_factory or _default_serial_factory
        self.device_version: int | None = None
        self.failure: str | None = None
        self.problems: list[str] = []
        self.n_delivered = 0
        self.n_dropped = 0
        self.stop_confirmed = threading.Event()
        self.stopped_at: float | None = None
        self._serial: Any = None
        self._lock = threading.Lock()  # state, pending acks
        self._tx_lock = threading.Lock()  # one frame at a time on the wire, packet numbers in order
        self._pending: dict[int, _Pending] = {}
        self._packet_number = 0
        self._decoder = FrameDecoder()
        self._link = "closed"  # closed -> waiting_init -> init_acked -> up
        self._init_frame: Frame | None = None
        self._init_event = threading.Event()
        self._armed = False
        self._stopped = False
        self._last_tx = 0.0
        self._last_pulse_t: float | None = None
        self._halt = threading.Event()  # ends the reader thread
        self._keepalive_stop = threading.Event()
        self._reader: threading.Thread | None = None
        self._keepalive: threading.Thread | None = None

    # ------------------------------------------------------------------ public API

    @property
    def failed(self) -> bool:
        """True once the device stopped answering, reported an error or the port failed."""
        return self.failure is not None

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` ran (until the next :meth:`open`)."""
        return self._stopped

    def open(self) -> None:
        """Open the port, connect (Init/InitAck), initialise the one-shot channel list mode, start the keep-alive.

        Raises :class:`StimulatorError` (naming the port and what did not answer) if any step fails; the port is
        closed again then.
        """
        if self._serial is not None:
            self.close()
        self.failure = None
        self.problems = []
        self.device_version = None
        self.stop_confirmed.clear()
        self._pending.clear()
        self._packet_number = 0
        self._decoder = FrameDecoder()
        self._init_frame = None
        self._init_event.clear()
        self._halt.clear()
        self._keepalive_stop.clear()
        self._armed = self._stopped = False
        self.stopped_at = None
        self._last_pulse_t = None
        settings = {
            "baudrate": self.baudrate,
            "bytesize": 8,
            "parity": "E",
            "stopbits": 1,
            "timeout": _READ_POLL_S,
            "write_timeout": 1.0,
        }
        try:
            ser = self.serial_factory(self.port, **settings)
        except StimulatorError:
            raise
        except Exception as exc:
            raise StimulatorError(f"cannot open the {_DEVICE} serial port {self.port}: {exc}") from exc
        try:
            if getattr(ser, "timeout", None) != _READ_POLL_S:
                ser.timeout = _READ_POLL_S  # the reader must wake up to check for overdue acks
        except Exception:
            pass
        try:
            ser.reset_input_buffer()  # Inits queued before we listened are stale
        except Exception:
            pass
        self._serial = ser
        self._link = "waiting_init"
        self._reader = threading.Thread(target=self._read_loop, name=f"sciencemode-reader-{self.port}", daemon=True)
        self._reader.start()
        try:
            self._handshake()
        except BaseException:
            self._halt_threads()
            self._close_port()
            raise
        self._last_tx = time.monotonic()
        self._armed = True
        self._keepalive = threading.Thread(
            target=self._keepalive_loop, name=f"sciencemode-keepalive-{self.port}", daemon=True
        )
        self._keepalive.start()

    def deliver(self, pulse: SafePulse) -> float:
        """Send one pulse now; return the time (``time.monotonic()``, s; on Linux the clock of pylsl's
        ``local_clock()``) at which its frame had been written to the port. The device outputs it 10-24 ms later.

        Does not wait for the ack (the reader thread checks it); raises :class:`StimulatorError` if the driver has
        failed, is stopped, or if the pulse cannot be represented exactly by the device (current: even whole mA,
        0..130 mA; pulse width: whole us, 20..500 us; channel: one of ``channels``; at least 8 ms after the
        previous pulse).
        """
        pulse = require_safe(pulse)
        if self.failure is not None:
            raise StimulatorError(self.failure)
        if not self._armed:
            state = "stopped; open() it again to restart" if self._stopped else "not open"
            raise StimulatorError(f"{_DEVICE} on {self.port} is {state}")
        data = self._pulse_data(pulse)
        now = time.monotonic()
        if self._last_pulse_t is not None and now - self._last_pulse_t < MIN_PULSE_INTERVAL_S:
            raise StimulatorError(
                f"{_DEVICE} cannot take pulses {1e3 * (now - self._last_pulse_t):.1f} ms apart: the one-shot channel "
                f"list mode needs >= {1e3 * MIN_PULSE_INTERVAL_S:g} ms between pulses"
            )
        t, _ = self._send(Command.START_CHANNEL_LIST_MODE, data, armed_only=True)
        self._last_pulse_t = t
        self.n_delivered += 1
        return t

    def stop(self) -> None:
        """Turn output off: send StopChannelListMode and stop the keep-alive (so the device watchdog also stops
        it within 1.2 s). Idempotent; never raises (problems are recorded in :attr:`problems`)."""
        try:
            with self._lock:
                if self._stopped:
                    return
                self._stopped = True
                self.stopped_at = time.monotonic()
            with self._tx_lock:  # no pulse or keep-alive after this point
                self._armed = False
            self._keepalive_stop.set()
            if self._serial is not None and self._link in ("init_acked", "up"):
                try:
                    self._send(Command.STOP_CHANNEL_LIST_MODE)
                except Exception as exc:
                    self._problem(f"{_DEVICE} on {self.port}: could not send StopChannelListMode: {exc}")
            ka = self._keepalive
            if ka is not None and ka is not threading.current_thread():
                ka.join(timeout=2.0)
        except Exception as exc:  # stop() must not raise
            self._problem(f"{_DEVICE} on {self.port}: stop() failed: {exc!r}")

    def close(self) -> None:
        """:meth:`stop`, wait briefly for the device to confirm it, then end the threads and close the port."""
        try:
            sent_stop = self._serial is not None and not self._stopped and self._link in ("init_acked", "up")
            self.stop()
            reader = self._reader
            if sent_stop and self.failure is None and reader is not None and reader.is_alive():
                if not self.stop_confirmed.wait(self.ack_timeout_s):
                    self._problem(f"{_DEVICE} on {self.port} did not confirm StopChannelListMode before close()")
            self._halt_threads()
            self._close_port()
        except Exception as exc:
            self._problem(f"{_DEVICE} on {self.port}: close() failed: {exc!r}")

    # ------------------------------------------------------------------ units

    def _pulse_data(self, pulse: SafePulse) -> bytes:
        """StartChannelListMode data for ``pulse``: the pulsed channel's parameters, 0 mA on the other channels."""
        if pulse.channel not in self.channels:
            raise StimulatorError(
                f"{_DEVICE} on {self.port}: channel {pulse.channel} was not initialised "
                f"(channels {list(self.channels)})"
            )
        amp, pw = pulse.amplitude_ma, pulse.pulse_width_us
        current = round(amp) if math.isfinite(amp) else -1
        if not (0 <= current <= CURRENT_MAX_MA and abs(amp - current) <= 1e-6 and current % CURRENT_STEP_MA == 0):
            raise StimulatorError(
                f"{_DEVICE} cannot output {amp:g} mA: it takes even whole mA from 0 to {CURRENT_MAX_MA} mA "
                f"(2 mA steps); refusing rather than rounding"
            )
        width = round(pw) if math.isfinite(pw) else -1
        if not (PULSE_WIDTH_MIN_US <= width <= PULSE_WIDTH_MAX_US and abs(pw - width) <= 1e-6):
            raise StimulatorError(
                f"{_DEVICE} cannot output a {pw:g} us pulse: it takes whole us from {PULSE_WIDTH_MIN_US} to "
                f"{PULSE_WIDTH_MAX_US} us; refusing rather than rounding"
            )
        data = bytearray()
        for channel in self.channels:
            if channel == pulse.channel:
                data += bytes((0, width >> 8, width & 0xFF, current))  # mode 0: single pulse
            else:
                data += bytes((0, 0, 0, 0))
        return bytes(data)

    # ------------------------------------------------------------------ wire

    def _send(
        self,
        command: Command,
        data: bytes = b"",
        *,
        expect_ack: bool = True,
        wait: bool = False,
        echo: int | None = None,
        armed_only: bool = False,
    ) -> tuple[float, _Pending | None]:
        """Write one frame and register the ack it expects; return (time the write completed, pending ack).

        ``armed_only``: send only while armed, checked under the write lock, so that nothing (a pulse, a keep-alive)
        follows the StopChannelListMode of a concurrent :meth:`stop`.
        """
        error: Exception | None = None
        with self._tx_lock:
            ser = self._serial
            if ser is None:
                raise StimulatorError(f"{_DEVICE} on {self.port} is not open")
            if armed_only and not self._armed:
                raise StimulatorError(
                    self.failure or f"{_DEVICE} on {self.port} is stopped; open() it again to restart"
                )
            if echo is None:
                number = self._packet_number
                self._packet_number = (number + 1) % 256
            else:
                number = echo
            frame = encode_frame(number, command, data)
            pending = None
            if expect_ack:
                pending = _Pending(number, command, time.monotonic(), wait)
                with self._lock:
                    self._pending[number] = pending
            try:
                ser.write(frame)
            except Exception as exc:
                error = exc
                with self._lock:
                    self._pending.pop(number, None)
            t = time.monotonic()
            if error is None:
                self._last_tx = t
                if pending is not None:
                    pending.t_sent = t
        if error is not None:  # outside the write lock: _fail() -> stop() writes too
            message = f"{_DEVICE} on {self.port}: writing {command.label} failed: {error}"
            self._fail(message)
            raise StimulatorError(message) from error
        return t, pending

    def _request(self, command: Command, data: bytes = b"") -> Frame:
        """Send ``command`` and wait for its ack (open() only); raise StimulatorError on silence or an error code."""
        _, pending = self._send(command, data, wait=True)
        assert pending is not None
        pending.done.wait(self.ack_timeout_s)
        with self._lock:
            self._pending.pop(pending.packet_number, None)
        if self.failure is not None:
            raise StimulatorError(self.failure)
        ack = pending.ack
        if ack is None:
            raise StimulatorError(
                f"{_DEVICE} on {self.port} did not answer {command.label} within {self.ack_timeout_s:g} s"
            )
        result = _signed(ack.data[0])
        if result != 0:
            raise StimulatorError(f"{_DEVICE} on {self.port} refused {command.label}: {_result_text(result)}")
        return ack

    def _stimulation_mode(self) -> int:
        ack = self._request(Command.GET_STIMULATION_MODE)
        if len(ack.data) != 2:
            raise StimulatorError(f"{_DEVICE} on {self.port}: GetStimulationModeAck without a mode byte")
        return ack.data[1]

    def _handshake(self) -> None:
        if not self._init_event.wait(self.init_timeout_s):
            raise StimulatorError(
                f"{_DEVICE} on {self.port} sent no Init within {self.init_timeout_s:g} s: is it switched on, "
                f"connected to this port and showing the ScienceMode start screen?"
            )
        if self.failure is not None:
            raise StimulatorError(self.failure)
        init = self._init_frame
        assert init is not None
        self.device_version = init.data[0] if init.data else None
        with self._lock:
            self._link = "init_acked"
        self._send(Command.INIT_ACK, bytes((0,)), expect_ack=False, echo=init.packet_number)
        mode = self._stimulation_mode()
        if mode != 0:  # a channel list mode left over from an earlier session
            self._request(Command.STOP_CHANNEL_LIST_MODE)
        mask = sum(1 << c for c in self.channels)  # bit 0 = device channel 1 = closedloop channel 0
        self._request(Command.INIT_CHANNEL_LIST_MODE, bytes((0, mask, 0, INTER_PULSE_INTERVAL_CODE, 0, 0, 0)))
        mode = self._stimulation_mode()
        if mode != 1:
            raise StimulatorError(
                f"{_DEVICE} on {self.port} reports {STIMULATION_MODES.get(mode, f'mode {mode}')} after "
                f"InitChannelListMode, expected 'stimulation initialised'"
            )
        with self._lock:
            self._link = "up"

    # ------------------------------------------------------------------ threads

    def _read_loop(self) -> None:
        ser = self._serial
        while not self._halt.is_set():
            try:
                waiting = ser.in_waiting
                chunk = ser.read(waiting if waiting else 1)
            except Exception as exc:
                if not self._halt.is_set():
                    self._fail(f"{_DEVICE} on {self.port}: the serial port failed: {exc}")
                return
            if chunk:
                for event in self._decoder.feed(chunk):
                    try:
                        self._handle(event)
                    except Exception as exc:  # a bug here must not kill the reader silently
                        self._fail(f"{_DEVICE} on {self.port}: could not handle {event!r}: {exc!r}")
            self._check_overdue()

    def _keepalive_loop(self) -> None:
        while True:
            wait = max(0.0, self._last_tx + self.keepalive_s - time.monotonic())
            if self._keepalive_stop.wait(wait):
                return
            if time.monotonic() - self._last_tx >= self.keepalive_s - 1e-3:
                try:
                    self._send(Command.GET_STIMULATION_MODE, armed_only=True)
                except StimulatorError:
                    return  # stopped, or _send() recorded the failure

    def _halt_threads(self) -> None:
        """End the keep-alive and reader threads without sending anything (also simulates a crashed host)."""
        self._keepalive_stop.set()
        self._halt.set()
        me = threading.current_thread()
        for thread in (self._keepalive, self._reader):
            if thread is not None and thread is not me:
                thread.join(timeout=2.0)
        self._armed = False

    def _close_port(self) -> None:
        ser, self._serial = self._serial, None
        self._link = "closed"
        if ser is not None:
            try:
                ser.close()
            except Exception as exc:
                self._problem(f"{_DEVICE} on {self.port}: closing the port failed: {exc}")

    # ------------------------------------------------------------------ what the device says

    def _handle(self, event: Frame | FrameError) -> None:
        if isinstance(event, FrameError):
            if self._link == "waiting_init":  # the tail of a frame cut by the input flush in open()
                self._problem(f"{_DEVICE} on {self.port}: ignored a broken frame before Init ({event.reason})")
                return
            self._fail(
                f"{_DEVICE} on {self.port} sent a corrupt frame ({event.reason}: {event.raw.hex(' ')}); "
                f"not accepted, the link cannot be trusted"
            )
            return
        command = event.command
        if command == Command.INIT:
            self._on_init(event)
        elif command == Command.STIMULATION_ERROR:
            code = _signed(event.data[0]) if event.data else 0
            meaning = STIMULATION_ERRORS.get(code, "an undocumented stimulation error")
            self._fail(f"{_DEVICE} on {self.port} stopped stimulation: {meaning} (StimulationError {code})")
        elif command == Command.UNKNOWN_COMMAND:
            echoed = event.data[0] if event.data else -1
            self._fail(f"{_DEVICE} on {self.port} did not understand {_label(echoed)} (UnknownCommand)")
        elif command in (
            Command.GET_STIMULATION_MODE_ACK,
            Command.INIT_CHANNEL_LIST_MODE_ACK,
            Command.START_CHANNEL_LIST_MODE_ACK,
            Command.STOP_CHANNEL_LIST_MODE_ACK,
            Command.SINGLE_PULSE_ACK,
        ):
            self._on_ack(event)
        # anything else (MOTOmed information packets) is not ours

    def _on_init(self, frame: Frame) -> None:
        with self._lock:
            link = self._link
        if link == "waiting_init":
            self._init_frame = frame
            self._init_event.set()
        elif link == "init_acked":  # our InitAck crossed the device's next Init: answer that one too
            self._send(Command.INIT_ACK, bytes((0,)), expect_ack=False, echo=frame.packet_number)
        elif not self._stopped:
            self._fail(
                f"{_DEVICE} on {self.port} restarted the connection (sent Init): it has stopped stimulation "
                f"(its watchdog expired or it was reset)"
            )

    def _on_ack(self, frame: Frame) -> None:
        with self._lock:
            pending = self._pending.pop(frame.packet_number, None)
        name = _label(frame.command)
        if pending is None:
            self._problem(f"{_DEVICE} on {self.port}: unexpected {name} for packet {frame.packet_number}")
            return
        if frame.command != pending.command + 1:
            self._fail(
                f"{_DEVICE} on {self.port} answered {pending.command.label} (packet {frame.packet_number}) with {name}"
            )
            pending.done.set()
            return
        if not frame.data:
            self._fail(f"{_DEVICE} on {self.port}: {name} (packet {frame.packet_number}) has no result byte")
            pending.done.set()
            return
        pending.ack = frame
        pending.done.set()
        if pending.waited_for:
            return  # open() judges it
        result = _signed(frame.data[0])
        if result == -8 and pending.command == Command.START_CHANNEL_LIST_MODE:
            self.n_dropped += 1
            self._problem(f"{_DEVICE} on {self.port} was busy and dropped the pulse of packet {frame.packet_number}")
        elif result == -8 and pending.command == Command.GET_STIMULATION_MODE:
            pass  # alive, just busy
        elif result != 0:
            self._fail(f"{_DEVICE} on {self.port} refused {pending.command.label}: {_result_text(result)}")
        elif pending.command == Command.STOP_CHANNEL_LIST_MODE:
            self.stop_confirmed.set()
        elif pending.command == Command.GET_STIMULATION_MODE and self._armed and len(frame.data) > 1:
            if frame.data[1] not in (1, 2):
                mode = STIMULATION_MODES.get(frame.data[1], f"mode {frame.data[1]}")
                self._fail(f"{_DEVICE} on {self.port} left the channel list mode on its own (it reports {mode})")

    def _check_overdue(self) -> None:
        now = time.monotonic()
        with self._lock:
            overdue = [p for p in self._pending.values() if not p.waited_for and now - p.t_sent > self.ack_timeout_s]
            for p in overdue:
                del self._pending[p.packet_number]
        for p in overdue:
            self._fail(
                f"{_DEVICE} on {self.port} stopped answering: no {p.command.label}Ack to packet {p.packet_number} "
                f"within {self.ack_timeout_s:g} s; output turned off"
            )

    def _problem(self, message: str) -> None:
        with self._lock:
            self.problems.append(message)

    def _fail(self, message: str) -> None:
        """Record the first failure, wake open() if it waits, and turn output off. Never raises."""
        with self._lock:
            first = self.failure is None
            if first:
                self.failure = message
            self.problems.append(message)
            waiting = list(self._pending.values())
        for pending in waiting:
            pending.done.set()
        self._init_event.set()
        if first:
            self.stop()
