"""Real Lab Streaming Layer outlets and inlets on loopback (no mocks)."""

import asyncio
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pylsl
import pytest

from acquisition.lsl import LSLPublisher, LSLSource, list_streams
from closedloop.errors import StreamLost, StreamMismatch, StreamNotFound
from closedloop.safety import SafetyLayer, SafetyLimits
from closedloop.stimulators import COMMAND_CHANNELS, LSLStimulator
from closedloop.types import PulseCommand, StreamInfo

pytestmark = pytest.mark.lsl
PLAYER = Path(__file__).with_name("lsl_player.py")


def _uid(tag: str) -> str:
    return f"test-{tag}-{uuid.uuid4().hex[:10]}"


def _outlet(source_id, n_ch=3, rate=1000.0, units="microvolts"):
    info = StreamInfo("test-emg", "EMG", rate, tuple(f"c{i}" for i in range(n_ch)), (units,), source_id)
    return LSLPublisher(info, "float32")


async def _first_chunks(src, n_samples):
    got, ts = [], []
    async for c in src:
        got.append(c.samples)
        ts.append(c.timestamps)
        if sum(len(g) for g in got) >= n_samples:
            break
    return np.vstack(got)[:n_samples], np.concatenate(ts)[:n_samples]


def test_pushed_chunk_arrives_with_values_timestamps_labels_and_units():
    sid = _uid("values")
    pub = _outlet(sid, units="millivolts")

    async def main():
        async with LSLSource(source_id=sid, expected_channels=3, expected_rate_hz=1000.0) as src:
            assert src.info.channel_names == ("c0", "c1", "c2")
            assert src.info.units == ("millivolts",) * 3
            assert src.info.scale_to_uv()[0] == 1000.0
            assert pub.wait_for_consumers(5.0)
            x = np.arange(24, dtype=np.float32).reshape(8, 3)
            t_last = pylsl.local_clock()
            pub.push(x, t_last)
            got, ts = await asyncio.wait_for(_first_chunks(src, 8), 5.0)
            np.testing.assert_array_equal(got, x)
            # timestamps: the last is the one pushed, the others deduced at the nominal rate
            np.testing.assert_allclose(ts, t_last - np.arange(7, -1, -1) / 1000.0, atol=1e-4)

    asyncio.run(main())


def test_subprocess_device_nothing_dropped_or_reordered():
    sid = _uid("player")
    with subprocess.Popen(
        [sys.executable, str(PLAYER), sid, "4", "2048", "8", "3.0"], stdout=subprocess.DEVNULL
    ) as proc:

        async def main():
            async with LSLSource(source_id=sid, expected_channels=4, resolve_timeout_s=10.0) as src:
                got, ts = await asyncio.wait_for(_first_chunks(src, 4096), 10.0)
            return got, ts

        got, ts = asyncio.run(main())
        proc.wait(timeout=10)
    idx = got[:, 0].astype(np.int64)
    np.testing.assert_array_equal(np.diff(idx), 1)  # consecutive: none dropped, none reordered
    np.testing.assert_allclose(np.diff(ts), 1 / 2048, atol=1e-6)
    np.testing.assert_allclose(got[:, 1], np.sin(2 * np.pi * 10 * idx / 2048), atol=1e-6)


def test_missing_stream_error_names_the_query_and_lists_what_exists():
    present = _uid("present")
    pub = _outlet(present)  # noqa: F841 (keeps the outlet alive)
    missing = _uid("missing")

    async def main():
        async with LSLSource(source_id=missing, resolve_timeout_s=0.5):
            pass

    t0 = time.perf_counter()
    with pytest.raises(StreamNotFound) as err:
        asyncio.run(main())
    assert time.perf_counter() - t0 < 5.0
    msg = str(err.value)
    assert f"source_id='{missing}'" in msg and "within 0.5 s" in msg
    assert present in msg  # what exists is listed
    assert present in {s.source_id for s in list_streams(0.5)}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"expected_channels": 4}, "has 3 channels but 4 are configured"),
        ({"expected_rate_hz": 2048.0}, "runs at 1000 Hz but 2048 Hz"),
    ],
)
def test_wrong_channel_count_or_rate_is_refused_before_any_sample(kwargs, match):
    sid = _uid("mismatch")
    pub = _outlet(sid)  # noqa: F841

    async def main():
        async with LSLSource(source_id=sid, **kwargs):
            pass

    with pytest.raises(StreamMismatch, match=match):
        asyncio.run(main())


def test_stalled_stream_is_reported_within_its_stall_timeout():
    sid = _uid("stall")
    with subprocess.Popen(
        [sys.executable, str(PLAYER), sid, "2", "1000", "10", "6.0", "1.0"], stdout=subprocess.DEVNULL
    ) as proc:

        async def main():
            last = None
            async with LSLSource(source_id=sid, stall_timeout_s=0.5, resolve_timeout_s=10.0) as src:
                try:
                    async for _ in src:
                        last = time.perf_counter()
                except StreamLost as exc:
                    return time.perf_counter() - last, str(exc)
            return None, ""

        waited, msg = asyncio.run(main())
        proc.kill()
    assert waited is not None, "stall not detected"
    assert 0.45 <= waited <= 0.5 + 0.15, waited  # reported within the stall timeout (+ scheduling slack)
    assert "delivered no samples for 0.5 s" in msg


def test_outlet_that_disappears_is_reported_as_lost():
    sid = _uid("lost")
    pub = _outlet(sid)

    async def main():
        async with LSLSource(source_id=sid, stall_timeout_s=3.0) as src:
            pub.wait_for_consumers(5.0)
            pub.push(np.zeros((4, 3), np.float32))
            t_close = None
            async for _ in src:
                if t_close is None:
                    pub.close()
                    t_close = time.perf_counter()
            return None

    t0 = time.perf_counter()
    with pytest.raises(StreamLost):
        asyncio.run(main())
    assert time.perf_counter() - t0 < 5.0


def test_lsl_stimulator_publishes_checked_pulses_and_off():
    stim = LSLStimulator(name="test-stim", source_id=_uid("stim"), wait_for_consumer_s=5.0)
    found = pylsl.resolve_bypred(f"source_id='{stim.source_id}'", 1, 5.0)
    inlet = pylsl.StreamInlet(found[0])
    inlet.open_stream(5.0)
    stim.open()
    safety = SafetyLayer(SafetyLimits(max_amplitude_ma=20.0, max_step_ma=50.0, allowed_channels=(1,)), stim)
    t = pylsl.local_clock()
    p = safety.deliver(PulseCommand(t, 1, 35.0, 250.0))  # clamped to 20 mA
    stim.stop()
    data, ts = [], []
    deadline = time.monotonic() + 5.0
    while len(data) < 2 and time.monotonic() < deadline:
        d, t_ = inlet.pull_chunk(timeout=0.5)
        data += d
        ts += t_
    assert data[0] == [1.0, 20.0, 250.0]
    assert ts[0] == pytest.approx(p.t, abs=1e-3)
    assert data[1][0] == -1.0  # all output off
    h = inlet.info().desc().child("channels").child("channel")
    assert h.child_value("label") == COMMAND_CHANNELS[0]
    stim.close()
