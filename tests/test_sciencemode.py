"""The RehaStim 2 (ScienceMode 2) driver against a fake device on a real pseudo-terminal, through pyserial.

Expected frames are built here by hand (``_hand_frame``: stuffing and CRC written out in this file, the CRC checked
against the CRC-8/SMBUS catalogue value), independently of the driver's encoder and of the fake's.
Measured timings are printed (see them with ``pytest -rP``).
"""

from __future__ import annotations

import importlib
import itertools
import random
import re
import sys
import time

import pytest
import serial
from fake_rehastim import FakeRehaStim

from closedloop.drivers.sciencemode import Frame, FrameDecoder, FrameError, ScienceModeStimulator
from closedloop.errors import SafetyError, StimulatorError
from closedloop.safety import SafetyLayer, SafetyLimits, Stimulator
from closedloop.types import PulseCommand

KEEPALIVE_S = 0.2
ACK_TIMEOUT_S = 0.3
DEVICE_WATCHDOG_S = 1.2  # ScienceMode2 protocol, table 7
SLACK_S = 0.15  # scheduling slack on a loaded test machine
LIMITS = SafetyLimits(
    max_amplitude_ma=40.0,
    max_pulse_width_us=500.0,
    max_charge_uc=20.0,
    max_step_ma=10.0,
    ramp_reset_s=5.0,
    allowed_channels=(0, 1, 2),
)


# ---------------------------------------------------------------------- hand-made frames


def _crc8_by_hand(data: bytes) -> int:
    """CRC-8/SMBUS: shift left, XOR 0x07 when the top bit falls out."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            carry = crc & 0x80
            crc = (crc << 1) & 0xFF
            if carry:
                crc ^= 0x07
    return crc


def _hand_frame(packet_number: int, command: int, data: list[int]) -> bytes:
    body = []
    for value in [packet_number, command, *data]:
        if value in (0xF0, 0x0F, 0x81):
            body += [0x81, value ^ 0x55]
        else:
            body.append(value)
    return bytes([0xF0, 0x81, _crc8_by_hand(bytes(body)) ^ 0x55, 0x81, len(body) ^ 0x55, *body, 0x0F])


def test_hand_crc_is_crc8_smbus():
    assert _crc8_by_hand(b"123456789") == 0xF4  # the catalogue check value of CRC-8/SMBUS (poly 0x07)


# ---------------------------------------------------------------------- fixtures


def _stimulator(fake: FakeRehaStim, **kwargs) -> ScienceModeStimulator:
    options = {
        "channels": (0, 2),
        "keepalive_s": KEEPALIVE_S,
        "ack_timeout_s": ACK_TIMEOUT_S,
        "serial_factory": serial.Serial,
    }
    options.update(kwargs)
    return ScienceModeStimulator(fake.port, **options)


@pytest.fixture
def fake():
    with FakeRehaStim(init_interval_s=0.1) as device:
        yield device


@pytest.fixture
def stim(fake):
    driver = _stimulator(fake)
    driver.open()
    yield driver
    driver.close()


def _pulse(channel=0, amplitude_ma=6.0, pulse_width_us=200.0) -> PulseCommand:
    return PulseCommand(time.monotonic(), channel, amplitude_ma, pulse_width_us)


def _wait(predicate, timeout: float) -> float | None:
    """Poll until ``predicate()``; return the time (monotonic) it became true, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(0.002)
    return None


# ---------------------------------------------------------------------- import, open


def test_module_imports_and_open_explains_without_pyserial(monkeypatch):
    monkeypatch.setitem(sys.modules, "serial", None)  # "import serial" now raises ImportError
    monkeypatch.delitem(sys.modules, "closedloop.drivers.sciencemode")
    monkeypatch.delitem(sys.modules, "closedloop.drivers")
    module = importlib.import_module("closedloop.drivers.sciencemode")
    driver = module.ScienceModeStimulator("/dev/ttyUSB0")
    message = "the ScienceMode driver needs pyserial: pip install 'closedloop[sciencemode]'"
    with pytest.raises(StimulatorError, match=re.escape(message)):
        driver.open()


def test_open_handshake_sequence_and_bytes():
    with FakeRehaStim() as fake:  # the device's own Init repetition, 0.5 s
        driver = _stimulator(fake)
        t0 = time.monotonic()
        driver.open()
        took = time.monotonic() - t0
        try:
            first = fake.commands[:4]
            assert [c.name for c in first] == [
                "InitAck",
                "GetStimulationMode",
                "InitChannelListMode",
                "GetStimulationMode",
            ]
            assert fake.errors == [] and fake.numbering_errors == []
            assert all(c.problem is None for c in fake.commands)  # every checksum and length right
            # InitAck echoes the packet number of the Init it answers; then the PC counts 0, 1, 2
            assert first[0].packet_number == fake.inits_sent[-1][1]
            assert first[0].data == b"\x00"
            assert [c.packet_number for c in first[1:]] == [0, 1, 2]
            assert [c.answer for c in first] == [None, 0, 0, 0]
            # InitChannelListMode: no low-frequency factor, channels 1 and 3 (closedloop 0 and 2), no low-frequency
            # channels, inter-pulse interval code 13 (8 ms), main interval code 0 (one-shot), fixed execution
            init = first[2]
            assert init.data == bytes([0, 0b101, 0, 13, 0, 0, 0])
            # by hand: payload 01 1E 00 05 00 0D 00 00 00 (nothing to stuff), 9 bytes -> 9 ^ 0x55 = 0x5C;
            # CRC-8 of it 0xCF -> 0xCF ^ 0x55 = 0x9A
            assert _crc8_by_hand(bytes.fromhex("01 1e 00 05 00 0d 00 00 00")) == 0xCF
            assert init.raw == bytes.fromhex("f0 81 9a 81 5c 01 1e 00 05 00 0d 00 00 00 0f")
            assert first[1].raw == _hand_frame(0, 10, [])
            assert fake.connected and fake.state == "initialised"
            assert fake.active_channels == [1, 3] and fake.main_interval_code == 0
            assert driver.device_version == 1 and driver.failure is None
            assert isinstance(driver, Stimulator)
            assert took < 0.5 + 0.3  # at most one Init period plus the exchange
            print(f"open() took {took * 1e3:.0f} ms (Init every 500 ms)")
        finally:
            driver.close()


def test_open_without_init_names_the_port(fake):
    fake.silent = True
    driver = _stimulator(fake, init_timeout_s=0.4)
    t0 = time.monotonic()
    with pytest.raises(StimulatorError, match=rf"{re.escape(fake.port)} sent no Init within 0\.4 s"):
        driver.open()
    assert 0.4 <= time.monotonic() - t0 < 0.4 + SLACK_S
    with pytest.raises(StimulatorError, match="not open"):
        driver.deliver(SafetyLayer(LIMITS, driver).check(_pulse()))


def test_open_unanswered_command_names_it(fake):
    fake.mute_commands = {30}
    driver = _stimulator(fake)
    with pytest.raises(
        StimulatorError, match=rf"{re.escape(fake.port)} did not answer InitChannelListMode within 0\.3 s"
    ):
        driver.open()
    assert driver._serial is None  # the port was closed again


def test_open_refused_with_error_code(fake):
    fake.error_replies[30] = -3
    driver = _stimulator(fake)
    with pytest.raises(StimulatorError, match="refused InitChannelListMode: error -3, wrong mode error"):
        driver.open()


def test_open_stops_a_running_channel_list_first(fake):
    fake.state_on_connect = "running"  # as if a channel list were left running (a device resets it normally)
    fake.active_channels = [1]
    driver = _stimulator(fake)
    driver.open()
    try:
        names = [c.name for c in fake.commands[:5]]
        assert names == [
            "InitAck",
            "GetStimulationMode",
            "StopChannelListMode",
            "InitChannelListMode",
            "GetStimulationMode",
        ]
        assert fake.state == "initialised" and fake.errors == []
    finally:
        driver.close()


# ---------------------------------------------------------------------- deliver


def test_deliver_through_the_safety_layer(fake, stim):
    layer = SafetyLayer(LIMITS, stim)
    plan = [(0, 6.0, 200.0), (2, 8.0, 496.0), (0, 14.0, 385.0), (2, 16.0, 20.0)]
    returned = []
    for channel, amp, width in plan:
        t_call = time.monotonic()
        pulse = layer.deliver(_pulse(channel, amp, width))
        assert pulse is not None and (pulse.amplitude_ma, pulse.pulse_width_us) == (amp, width)  # not clamped
        assert t_call <= pulse.t <= time.monotonic()  # the time the frame was written, returned at once
        returned.append((t_call, pulse.t))
        time.sleep(0.015)
    assert fake.wait_for(lambda: len(fake.pulses) == len(plan))
    assert [(p.device_channel - 1, p.current_ma, p.pulse_width_us) for p in fake.pulses] == [
        (c, int(a), int(w)) for c, a, w in plan
    ]
    starts = fake.commands_named("StartChannelListMode")
    assert len(starts) == len(plan) and all(c.problem is None and c.answer == 0 for c in starts)
    for (t_call, t_written), command in zip(returned, starts, strict=True):
        assert t_call <= command.t < t_written + 0.05  # the device got it while deliver() wrote it, or just after
    # 496 us = 0x01F0: the LSB is the start byte and must go out as 81 A5; 385 us = 0x0181 -> 81 D4
    second, third = starts[1], starts[2]
    assert second.data == bytes([0, 0, 0, 0, 0, 0x01, 0xF0, 8])
    assert second.raw == _hand_frame(second.packet_number, 32, [0, 0, 0, 0, 0, 0x01, 0xF0, 8])
    assert bytes([0x81, 0xA5]) in second.raw and 0xF0 not in second.raw[1:]
    assert third.raw == _hand_frame(third.packet_number, 32, [0, 0x01, 0x81, 14, 0, 0, 0, 0])
    assert bytes([0x81, 0xD4]) in third.raw
    assert fake.numbering_errors == [] and fake.errors == []
    assert _wait(lambda: not stim._pending, 1.0) is not None  # every ack came back and was accepted
    assert stim.failure is None and stim.problems == [] and stim.n_delivered == len(plan)
    assert fake.output_on


class _GridFree:
    """A stimulator without a resolution: lets the test mint SafePulses the RehaStim 2 cannot output."""

    def open(self):
        pass

    def deliver(self, pulse):
        return pulse.t

    def stop(self):
        pass

    def close(self):
        pass


def test_deliver_refuses_what_the_device_cannot_do(fake, stim):
    with pytest.raises(SafetyError, match="not checked by the safety layer"):
        stim.deliver(_pulse())  # a raw PulseCommand
    # SafePulses off the device's grid (checked by a layer over a stimulator without one): refused, not rounded
    minting = SafetyLayer(LIMITS, _GridFree())
    for command, message in [
        (_pulse(0, 7.0, 200.0), r"cannot output 7 mA: it takes even whole mA"),
        (_pulse(0, 8.5, 200.0), r"cannot output 8\.5 mA"),
        (_pulse(0, 6.0, 10.0), r"cannot output a 10 us pulse: it takes whole us from 20 to 500 us"),
        (_pulse(0, 6.0, 200.5), r"cannot output a 200\.5 us pulse"),
        (_pulse(1, 6.0, 200.0), r"channel 1 was not initialised \(channels \[0, 2\]\)"),
    ]:
        pulse = minting.check(command)
        assert pulse is not None
        with pytest.raises(StimulatorError, match=message):
            stim.deliver(pulse)
    time.sleep(0.05)
    assert fake.commands_named("StartChannelListMode") == []  # nothing reached the device
    # two pulses closer than the 8 ms inter-pulse interval would overwrite each other
    layer = SafetyLayer(LIMITS, stim)
    stim.deliver(minting.check(_pulse(0, 6.0, 200.0)))
    with pytest.raises(StimulatorError, match=r"ms apart: the one-shot channel list mode needs >= 8 ms"):
        stim.deliver(minting.check(_pulse(2, 6.0, 200.0)))
    assert stim.failure is None  # a refused pulse is not a device failure
    time.sleep(0.01)
    assert layer.deliver(_pulse(2, 6.0, 200.0)) is not None
    assert fake.wait_for(lambda: len(fake.pulses) == 2)
    # through its safety layer, pulses are rounded DOWN to the device's grid: what was checked comes out
    time.sleep(0.01)
    p = layer.deliver(_pulse(0, 9.0, 200.7))
    assert (p.amplitude_ma, p.pulse_width_us) == (8.0, 200.0)
    assert fake.wait_for(lambda: len(fake.pulses) == 3)
    assert (fake.pulses[-1].current_ma, fake.pulses[-1].pulse_width_us) == (8, 200)
    time.sleep(0.01)
    assert layer.deliver(_pulse(0, 1.5, 200.0)) is None  # below 2 mA: no pulse, no fault
    assert layer.tripped is None and layer.counts["refuse"] == 1
    # and the layer keeps the device's 8-ms minimum between pulses on its own
    assert layer.deliver(_pulse(2, 6.0, 200.0)) is not None
    assert layer.deliver(_pulse(2, 6.0, 200.0)) is None  # immediately after: refused by the rate limit
    assert layer.tripped is None and stim.failure is None


# ---------------------------------------------------------------------- keep-alive, watchdog, stop


def test_keepalive_holds_the_device_and_its_watchdog_stops_a_dead_host(fake, stim):
    layer = SafetyLayer(LIMITS, stim)
    layer.deliver(_pulse())
    assert fake.wait_for(lambda: fake.output_on)
    t_idle = time.monotonic()
    time.sleep(DEVICE_WATCHDOG_S + 0.4)  # idle for longer than the device's watchdog
    assert fake.output_on and fake.watchdog_stops == [] and fake.watchdog_resets == []
    idle = [c for c in fake.commands if c.t >= t_idle]
    assert len(idle) >= (DEVICE_WATCHDOG_S + 0.4) / KEEPALIVE_S - 2
    assert all(c.name == "GetStimulationMode" and c.answer == 0 and c.problem is None for c in idle)
    gaps = [b - a for a, b in itertools.pairwise([t_idle] + [c.t for c in idle])]
    assert max(gaps) < KEEPALIVE_S + 0.1
    assert stim.failure is None

    t_kill = time.monotonic()
    stim._halt_threads()  # the host dies: no StopChannelListMode, no more keep-alives
    assert fake.wait_for(lambda: fake.watchdog_stops, timeout=DEVICE_WATCHDOG_S + 1.0)
    t_stop = fake.watchdog_stops[0]
    silence = t_stop - fake.last_valid_t
    assert fake.commands_named("StopChannelListMode") == []
    assert not fake.output_on and fake.state == "stopped"
    assert DEVICE_WATCHDOG_S <= silence <= DEVICE_WATCHDOG_S + 0.1
    assert t_stop - t_kill <= DEVICE_WATCHDOG_S + 0.1
    print(
        f"keep-alive gaps max {max(gaps) * 1e3:.0f} ms; device watchdog stopped output {silence * 1e3:.0f} ms "
        f"after the last packet, {(t_stop - t_kill) * 1e3:.0f} ms after the host died"
    )


def test_a_dead_keepalive_is_caught_by_the_device_watchdog_and_reported(fake, stim):
    stim._keepalive_stop.set()  # only the keep-alive thread dies
    stim._keepalive.join()
    t_detect = _wait(lambda: stim.failed, DEVICE_WATCHDOG_S + 1.0)
    assert t_detect is not None and fake.watchdog_stops  # the device stopped the initialised channel list
    assert t_detect - fake.watchdog_resets[0] < 0.05  # its new Init tells the driver at once
    assert f"RehaStim 2 on {fake.port} restarted the connection (sent Init)" in stim.failure
    with pytest.raises(StimulatorError, match="restarted the connection"):
        stim.deliver(SafetyLayer(LIMITS, stim).check(_pulse()))


def test_stop_turns_output_off_and_is_idempotent(fake, stim):
    layer = SafetyLayer(LIMITS, stim)
    layer.deliver(_pulse())
    assert fake.wait_for(lambda: fake.output_on)
    t0 = time.monotonic()
    stim.stop()
    returned_after = time.monotonic() - t0
    assert fake.wait_for(lambda: fake.state == "stopped")
    stops = fake.commands_named("StopChannelListMode")
    assert len(stops) == 1 and stops[0].answer == 0 and stops[0].raw == _hand_frame(stops[0].packet_number, 34, [])
    latency = stops[0].t - t0
    assert latency < 0.05 and returned_after < 0.05
    assert not fake.output_on
    assert stim.stopped and t0 <= stim.stopped_at <= stops[0].t
    assert stim.stop_confirmed.wait(1.0)
    stim.stop()  # twice: nothing more happens
    time.sleep(0.05)
    assert len(fake.commands_named("StopChannelListMode")) == 1
    with pytest.raises(StimulatorError, match=r"is stopped; open\(\) it again"):
        stim.deliver(layer.check(_pulse(2)))
    # the keep-alive stopped too: the device watchdog ends the connection 1.2 s after the last packet
    assert fake.wait_for(lambda: fake.watchdog_resets, timeout=DEVICE_WATCHDOG_S + 1.0)
    reset_after = fake.watchdog_resets[0] - stops[0].t
    assert DEVICE_WATCHDOG_S <= reset_after <= DEVICE_WATCHDOG_S + 0.1
    assert fake.watchdog_stops == []  # output was already off
    assert [c for c in fake.commands if c.t > stops[0].t] == []
    assert stim.failure is None
    print(
        f"stop(): returned in {returned_after * 1e3:.1f} ms, StopChannelListMode at the device after "
        f"{latency * 1e3:.1f} ms; device watchdog reset the connection {reset_after * 1e3:.0f} ms later"
    )
    # and the driver can be opened again (the device offers Init again after its reset)
    stim.close()
    fake.reset_line()
    stim.open()
    layer.reset()
    assert layer.deliver(_pulse(2)) is not None
    assert fake.wait_for(lambda: len(fake.pulses) == 2) and fake.numbering_errors == []


def test_stop_on_a_dead_port_does_not_raise(fake):
    driver = _stimulator(fake)
    driver.open()
    driver._halt_threads()  # so that stop() itself is the first to meet the dead port
    fake.close()  # the cable is pulled
    driver.stop()
    assert any("could not send StopChannelListMode" in p for p in driver.problems)
    driver.stop()
    driver.close()
    with pytest.raises(StimulatorError):
        driver.deliver(SafetyLayer(LIMITS, driver).check(_pulse()))


def test_pulled_cable_is_detected(fake, stim):
    fake.close()
    assert _wait(lambda: stim.failed, 1.0) is not None
    assert fake.port in stim.failure and "serial port failed" in stim.failure
    layer = SafetyLayer(LIMITS, stim)
    with pytest.raises(SafetyError, match="serial port failed"):
        layer.deliver(_pulse())
    assert layer.tripped is not None
    stim.stop()


# ---------------------------------------------------------------------- a device that stops answering or errs


def test_silent_device_is_detected_after_a_pulse(fake, stim):
    layer = SafetyLayer(LIMITS, stim)
    layer.deliver(_pulse(0, 6.0, 200.0))
    assert _wait(lambda: not stim._pending, 1.0) is not None
    fake.silent = True
    time.sleep(0.012)  # the safety layer allows 100 pulses/s per channel
    t_call = time.monotonic()
    pulse = layer.deliver(_pulse(0, 8.0, 200.0))
    assert pulse is not None and time.monotonic() - t_call < 0.05  # deliver() does not wait for the ack
    t_detect = _wait(lambda: stim.failed, 2.0)
    assert t_detect is not None
    detected_after = t_detect - pulse.t
    assert ACK_TIMEOUT_S <= detected_after <= ACK_TIMEOUT_S + SLACK_S
    assert f"RehaStim 2 on {fake.port} stopped answering" in stim.failure
    with pytest.raises(SafetyError, match="stopped answering"):
        layer.deliver(_pulse(0, 8.0, 200.0))
    assert layer.tripped is not None and fake.port in layer.tripped
    assert [e.kind for e in layer.events] == ["output_off"]
    # the driver still told the (deaf but listening) device to stop
    assert fake.wait_for(lambda: fake.commands_named("StopChannelListMode"))
    assert fake.state == "stopped"
    print(f"silent device detected {detected_after * 1e3:.0f} ms after the unanswered pulse")


def test_silent_device_is_detected_while_idle(fake, stim):
    t0 = time.monotonic()
    fake.silent = True
    t_detect = _wait(lambda: stim.failed, 2.0)
    assert t_detect is not None
    assert t_detect - t0 <= KEEPALIVE_S + ACK_TIMEOUT_S + SLACK_S
    assert "no GetStimulationModeAck" in stim.failure and fake.port in stim.failure
    with pytest.raises(StimulatorError, match=rf"RehaStim 2 on {re.escape(fake.port)} stopped answering"):
        stim.deliver(SafetyLayer(LIMITS, stim).check(_pulse()))
    print(f"silent idle device detected after {(t_detect - t0) * 1e3:.0f} ms")


@pytest.mark.parametrize(
    ("code", "meaning"),
    [(-1, "transfer error"), (-2, "parameter error"), (-3, "wrong mode error")],
)
def test_error_code_in_an_ack_surfaces(fake, stim, code, meaning):
    layer = SafetyLayer(LIMITS, stim)
    fake.error_replies[32] = code
    assert layer.deliver(_pulse()) is not None  # sent; the answer comes later
    assert _wait(lambda: stim.failed, 1.0) is not None
    expected = f"refused StartChannelListMode: error {code}, {meaning}"
    assert expected in stim.failure
    time.sleep(0.012)  # the safety layer allows 100 pulses/s per channel
    with pytest.raises(SafetyError, match=re.escape(expected)):
        layer.deliver(_pulse())
    assert layer.tripped is not None and fake.pulses == []


def test_busy_answer_to_a_pulse_is_counted_not_fatal(fake, stim):
    fake.error_replies[32] = -8
    stim.deliver(SafetyLayer(LIMITS, stim).check(_pulse()))
    assert _wait(lambda: stim.n_dropped == 1, 1.0) is not None
    assert stim.failure is None and "busy and dropped the pulse" in stim.problems[0]


def test_stimulation_error_from_the_device(fake, stim):
    layer = SafetyLayer(LIMITS, stim)
    layer.deliver(_pulse())
    assert fake.wait_for(lambda: fake.output_on)
    fake.stimulation_error(-2)
    assert _wait(lambda: stim.failed, 1.0) is not None
    assert "stopped stimulation: electrode error (StimulationError -2)" in stim.failure
    time.sleep(0.012)  # the safety layer allows 100 pulses/s per channel
    with pytest.raises(SafetyError, match="electrode error"):
        layer.deliver(_pulse())


def test_corrupt_ack_is_reported_not_accepted(fake, stim):
    stim.deliver(SafetyLayer(LIMITS, stim).check(_pulse()))
    assert _wait(lambda: not stim._pending, 1.0) is not None
    fake.corrupt_next_ack = True
    time.sleep(0.01)
    stim.deliver(SafetyLayer(LIMITS, stim).check(_pulse(2)))
    assert _wait(lambda: stim.failed, 1.0) is not None
    assert "sent a corrupt frame (checksum error" in stim.failure and "not accepted" in stim.failure
    assert any("corrupted the checksum" in what for _, what in fake.events)
    with pytest.raises(StimulatorError, match="checksum error"):
        stim.deliver(SafetyLayer(LIMITS, stim).check(_pulse()))


def test_corrupt_ack_fails_open(fake):
    fake.corrupt_next_ack = True
    driver = _stimulator(fake)
    with pytest.raises(StimulatorError, match="corrupt frame \\(checksum error"):
        driver.open()


# ---------------------------------------------------------------------- framing details


def _payload_with_crc(target: int) -> list[int]:
    """A GetStimulationModeAck-like payload [packet number, 11, 0, mode] whose stuffed CRC is ``target``."""
    for number in range(256):
        for mode in range(3):
            body = [number, 11, 0, mode]
            if any(v in (0xF0, 0x0F, 0x81) for v in body):
                continue
            if _crc8_by_hand(bytes(body)) ^ 0x55 == target:
                return body
    raise AssertionError(f"no payload gives checksum byte 0x{target:02X}")


def test_decoder_reads_the_header_by_position():
    # the always-stuffed checksum can be the stop byte (CRC 0x5A) or the start byte (CRC 0xA5)
    frames = []
    for target in (0x0F, 0xF0):
        number, command, result, mode = _payload_with_crc(target)
        raw = _hand_frame(number, command, [result, mode])
        assert raw[2] == target
        frames.append((raw, Frame(number, command, bytes([result, mode]), raw)))
    pyscience_style = bytes([0xF0, 0x81, 0, 0x81, 0, 0x07, 0x21, 0x81, 0x00])  # 0x55 escaped, as pyScienceMode does
    body = pyscience_style[5:]
    pyscience_style = pyscience_style[:2] + bytes([_crc8_by_hand(body) ^ 0x55, 0x81, len(body) ^ 0x55]) + body
    pyscience_style += b"\x0f"
    stream = b"\x00\x13" + b"".join(raw for raw, _ in frames) + pyscience_style
    rng = random.Random(1)
    decoder = FrameDecoder()
    out = []
    i = 0
    while i < len(stream):  # arbitrary chunking, as serial reads come
        n = rng.randint(1, 5)
        out += decoder.feed(stream[i : i + n])
        i += n
    assert out[:2] == [frame for _, frame in frames]
    assert out[2] == Frame(7, 0x21, b"\x55", pyscience_style)
    assert decoder.stray_bytes == 2
    bad = bytearray(frames[0][0])
    bad[6] ^= 0x01  # a bit flip in the command byte
    (error,) = FrameDecoder().feed(bytes(bad))
    assert isinstance(error, FrameError) and error.reason.startswith("checksum error")


def test_fake_device_is_strict():
    """The fake answers malformed frames the way the protocol document says the device does."""
    decoder = FrameDecoder()
    with FakeRehaStim(init_interval_s=0.3) as fake:
        port = serial.Serial(fake.port, 460800, parity=serial.PARITY_EVEN, timeout=0.01)

        def frames(wait: float) -> list[Frame]:
            deadline = time.monotonic() + wait
            got: list[Frame] = []
            while time.monotonic() < deadline:
                got += [f for f in decoder.feed(port.read(64)) if isinstance(f, Frame)]
            return got

        def exchange(raw: bytes) -> list[Frame]:
            port.write(raw)
            return frames(0.1)

        try:
            port.reset_input_buffer()
            assert [f.command for f in exchange(_hand_frame(0, 10, []))] in ([], [1])  # before InitAck: ignored
            assert any("GetStimulationMode before InitAck: ignored" in what for _, what in fake.errors)
            init = None
            while init is None:  # answer the next Init at once
                init = next((f for f in decoder.feed(port.read(64)) if isinstance(f, Frame) and f.command == 1), None)
            assert init.data == b"\x01"  # protocol version
            assert exchange(_hand_frame(init.packet_number, 2, [0])) == [] and fake.connected
            (ack,) = exchange(_hand_frame(0, 10, []))
            assert (ack.packet_number, ack.command, ack.data) == (0, 11, b"\x00\x00")  # ok, start mode
            wrong_crc = bytearray(_hand_frame(1, 10, []))
            wrong_crc[2] ^= 0x01
            (ack,) = exchange(bytes(wrong_crc))
            assert (ack.packet_number, ack.command, ack.data) == (1, 11, b"\xff")  # -1: transfer error
            wrong_length = bytearray(_hand_frame(1, 10, []))
            wrong_length[4] ^= 0x01
            (ack,) = exchange(bytes(wrong_length))
            assert ack.data == b"\xff"
            (unknown,) = exchange(_hand_frame(1, 99, []))
            assert (unknown.command, unknown.data) == (3, bytes([99]))  # UnknownCommand echoes the command
            (ack,) = exchange(_hand_frame(2, 10, [])[:6] + _hand_frame(2, 10, []))  # a second start byte
            assert ack.packet_number == 2 and any("second start byte" in what for _, what in fake.errors)
            (ack,) = exchange(_hand_frame(3, 32, [0, 0, 200, 6]))
            assert ack.data == b"\xfd"  # StartChannelListMode before InitChannelListMode: -3 wrong mode
            (ack,) = exchange(_hand_frame(4, 30, [0, 1, 0, 1, 0, 0, 0]))
            assert ack.data == b"\xfe"  # inter-pulse interval 2 ms < 8 ms: -2 parameter error
            (ack,) = exchange(_hand_frame(5, 30, [0, 1, 0, 13, 0, 10, 0]))
            assert ack.data == b"\xfe"  # continuous main interval 6 ms < 8 ms: -2
            exchange(_hand_frame(9, 10, []))
            assert fake.numbering_errors == ["packet 9 after 5"]
            crc_wrong = _crc8_by_hand(bytes([1, 10]))
            assert [e for _, e in fake.errors if "checksum" in e or "length" in e] == [
                f"GetStimulationMode: checksum error: header 0x{crc_wrong ^ 0x01:02X}, computed 0x{crc_wrong:02X}",
                "GetStimulationMode: data length error: header 3, transferred 2",
            ]
        finally:
            port.close()
