"""Tests of closedloop.recording.xdf.XDFWriter: files it writes are read back with pyxdf."""

from __future__ import annotations

import itertools
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import pyxdf
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from closedloop.recording.xdf import BOUNDARY_UUID, XDFWriter, _encode_varlen


def _load(path: Path) -> dict[str, dict]:
    """Load an XDF file with pyxdf (no clock sync, no dejitter); streams keyed by name."""
    streams, _ = pyxdf.load_xdf(str(path), synchronize_clocks=False, dejitter_timestamps=False)
    return {s["info"]["name"][0]: s for s in streams}


def _channel(stream: dict, i: int) -> dict:
    return stream["info"]["desc"][0]["channels"][0]["channel"][i]


def _footer(stream: dict) -> dict:
    return stream["footer"]["info"]


# ---------------------------------------------------------------------------------------------- round trip


def test_interleaved_streams_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1234)
    path = tmp_path / "session.xdf"
    emg_names = ["biceps", "triceps", "flexor", "extensor"]
    expected: dict[str, dict[str, list]] = {k: {"x": [], "t": []} for k in ("EMG", "Force", "Counter", "Markers")}
    t_emg = 1000.0
    t_irr = 1000.0
    n_counter = 0

    with XDFWriter(path) as w:
        emg = w.add_stream("EMG", "EMG", emg_names, ["microvolts"], 2048.0, "float32", source_id="amp-1")
        force = w.add_stream("Force", "Force", ["fx", "fy", "fz"], ["N", "N", "N"], 0.0, "double64")
        counter = w.add_stream("Counter", "Misc", ["count", "neg"], "a.u.", 100.0, "int32")
        markers = w.add_stream("Markers", "Markers", ["event", "detail"], ["", ""], 0.0, "string")
        assert (emg, force, counter, markers) == (1, 2, 3, 4)
        w.write_clock_offset(emg, 999.0, 0.001)

        for step in range(60):
            which = rng.integers(0, 4)
            if which == 0:
                n = int(rng.integers(1, 400))
                x = rng.standard_normal((n, 4)).astype(np.float32) * 100
                t = t_emg + np.arange(n) / 2048.0 + rng.normal(0, 1e-5, n)
                t_emg += n / 2048.0
                w.write_samples(emg, x, t)
                expected["EMG"]["x"].append(x)
                expected["EMG"]["t"].append(t)
            elif which == 1:
                n = int(rng.integers(1, 20))
                x = rng.standard_normal((n, 3))  # float64
                t = t_irr + np.cumsum(rng.exponential(0.3, n))
                t_irr = float(t[-1])
                w.write_samples(force, x, t)
                expected["Force"]["x"].append(x)
                expected["Force"]["t"].append(t)
            elif which == 2:
                n = int(rng.integers(1, 50))
                x = np.stack([np.arange(n_counter, n_counter + n), rng.integers(-(2**31), 0, n)], axis=1)
                t = 1000.0 + np.arange(n_counter, n_counter + n) / 100.0
                n_counter += n
                w.write_samples(counter, x, t)  # int64 input, cast to int32
                expected["Counter"]["x"].append(x)
                expected["Counter"]["t"].append(t)
            else:
                n = int(rng.integers(1, 4))
                x = [[f"pulse {step}-{i}", "µ<&>\"' " * int(rng.integers(0, 60))] for i in range(n)]
                t = 1000.0 + step + np.arange(n) * 0.01
                w.write_samples(markers, x, t)
                expected["Markers"]["x"].append(x)
                expected["Markers"]["t"].append(t)
            if step % 20 == 19:
                w.write_boundary()

    streams = _load(path)
    assert list(streams) == ["EMG", "Force", "Counter", "Markers"]
    for name, fmt_dtype in (("EMG", np.float32), ("Force", np.float64), ("Counter", np.int32)):
        s = streams[name]
        x = np.concatenate(expected[name]["x"]).astype(fmt_dtype)
        t = np.concatenate(expected[name]["t"])
        assert s["time_series"].dtype == fmt_dtype
        np.testing.assert_array_equal(s["time_series"], x)
        np.testing.assert_array_equal(s["time_stamps"], t)
        footer = _footer(s)
        assert int(footer["sample_count"][0]) == len(t)
        assert float(footer["first_timestamp"][0]) == t[0]
        assert float(footer["last_timestamp"][0]) == t[-1]

    s = streams["Markers"]
    assert s["time_series"] == [row for chunk in expected["Markers"]["x"] for row in chunk]
    np.testing.assert_array_equal(s["time_stamps"], np.concatenate(expected["Markers"]["t"]))
    assert int(_footer(s)["sample_count"][0]) == len(s["time_stamps"])

    emg_info = streams["EMG"]["info"]
    assert emg_info["type"] == ["EMG"]
    assert emg_info["source_id"] == ["amp-1"]
    assert int(emg_info["channel_count"][0]) == 4
    assert float(emg_info["nominal_srate"][0]) == 2048.0
    assert emg_info["channel_format"] == ["float32"]
    for i, label in enumerate(emg_names):
        assert _channel(streams["EMG"], i)["label"][0] == label
        assert _channel(streams["EMG"], i)["unit"][0] == "microvolts"
        assert _channel(streams["EMG"], i)["type"][0] == "EMG"
    assert [_channel(streams["Force"], i)["label"][0] for i in range(3)] == ["fx", "fy", "fz"]
    assert float(streams["Force"]["info"]["nominal_srate"][0]) == 0.0
    assert streams["Force"]["info"]["channel_format"] == ["double64"]
    assert _channel(streams["Counter"], 1)["unit"][0] == "a.u."  # a single unit applies to all
    assert streams["Markers"]["info"]["type"] == ["Markers"]
    assert streams["EMG"]["clock_times"] == [999.0]
    assert streams["EMG"]["clock_values"] == [0.001]


@pytest.mark.parametrize(("fmt", "dtype"), [("int16", np.int16), ("int64", np.int64)])
def test_other_integer_formats_round_trip(tmp_path: Path, fmt: str, dtype: type) -> None:
    info = np.iinfo(dtype)
    x = np.array([[info.min, info.max], [0, -1], [7, 8]], dtype=dtype)
    t = np.array([0.5, 1.5, 2.5])
    with XDFWriter(tmp_path / "i.xdf") as w:
        sid = w.add_stream("I", "Misc", ["a", "b"], "count", 2.0, fmt)
        w.write_samples(sid, x, t)
    s = _load(tmp_path / "i.xdf")["I"]
    assert s["time_series"].dtype == dtype
    np.testing.assert_array_equal(s["time_series"], x)


def test_file_header_and_desc(tmp_path: Path) -> None:
    path = tmp_path / "desc.xdf"
    desc = {
        "amplifier": {"model": "Amp <X> & co", "gain": 24, "filters": {"highpass_hz": 0.5}},
        "electrode": [{"site": "C3"}, {"site": "C4"}],
        "calibrated": True,
        "notes": None,
    }
    with XDFWriter(path) as w:
        w.add_stream("EMG & <more>", "EMG", ["ch<1>"], ["µV"], 512, "float32", desc=desc)
    streams, header = pyxdf.load_xdf(str(path), synchronize_clocks=False, dejitter_timestamps=False)
    assert header["info"]["version"] == ["1.0"]
    assert header["info"]["datetime"][0]
    (s,) = streams
    assert s["info"]["name"] == ["EMG & <more>"]
    d = s["info"]["desc"][0]
    assert d["channels"][0]["channel"][0]["label"] == ["ch<1>"]
    assert d["channels"][0]["channel"][0]["unit"] == ["µV"]
    amp = d["amplifier"][0]
    assert amp["model"] == ["Amp <X> & co"]
    assert amp["gain"] == ["24"]
    assert amp["filters"][0]["highpass_hz"] == ["0.5"]
    assert [e["site"] for e in d["electrode"]] == [["C3"], ["C4"]]
    assert d["calibrated"] == ["true"]
    assert d["notes"] == [None]
    # A stream without samples: pyxdf returns an empty array; the footer says 0 samples.
    assert s["time_series"].shape == (0, 1)
    assert int(_footer(s)["sample_count"][0]) == 0


# ---------------------------------------------------------------------------------------------- property


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_chunked_float32_equals_concatenation(data: st.DataObject) -> None:
    n_channels = data.draw(st.integers(1, 8), label="n_channels")
    sizes = data.draw(st.lists(st.integers(0, 40), max_size=12), label="chunk sizes")
    n = sum(sizes)
    signal = data.draw(
        hnp.arrays(np.float32, (n, n_channels), elements=st.floats(width=32, allow_nan=True)), label="signal"
    )
    start = data.draw(st.floats(0.0, 1e5), label="start")
    steps = data.draw(hnp.arrays(np.float64, (n,), elements=st.floats(1e-4, 10.0)), label="timestamp increments")
    timestamps = start + np.cumsum(steps)  # strictly increasing

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.xdf"
        with XDFWriter(path) as w:
            sid = w.add_stream("S", "EMG", [f"c{i}" for i in range(n_channels)], "uV", 1000.0, "float32")
            edges = np.cumsum([0, *sizes])
            for a, b in itertools.pairwise(edges):
                w.write_samples(sid, signal[a:b], timestamps[a:b])
        s = _load(path)["S"]

    assert s["time_series"].shape == (n, n_channels)
    # Compare bit patterns: exact even for NaN payloads and signed zeros.
    np.testing.assert_array_equal(
        np.asarray(s["time_series"], dtype=np.float32).view(np.uint32), signal.view(np.uint32)
    )
    np.testing.assert_array_equal(s["time_stamps"], timestamps)
    assert int(_footer(s)["sample_count"][0]) == n


# ---------------------------------------------------------------------------------------------- crash safety


def test_flushed_but_unclosed_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "crash.xdf"
    rng = np.random.default_rng(7)
    w = XDFWriter(path)
    try:
        emg = w.add_stream("EMG", "EMG", ["a", "b"], "uV", 2048.0, "float32")
        mk = w.add_stream("Markers", "Markers", ["m"], "", 0.0, "string")
        x = rng.standard_normal((1000, 2)).astype(np.float32)
        t = 10.0 + np.arange(1000) / 2048.0
        for a in range(0, 1000, 100):
            w.write_samples(emg, x[a : a + 100], t[a : a + 100])
        w.write_samples(mk, [["start"], ["stop"]], [10.0, 10.4])
        w.flush()

        streams = _load(path)  # the writer is still open: no footers yet
        assert "footer" not in streams["EMG"]
        assert "footer" not in streams["Markers"]
        np.testing.assert_array_equal(streams["EMG"]["time_series"], x)
        np.testing.assert_array_equal(streams["EMG"]["time_stamps"], t)
        assert streams["Markers"]["time_series"] == [["start"], ["stop"]]
    finally:
        w.close()
    streams = _load(path)
    assert int(_footer(streams["EMG"])["sample_count"][0]) == 1000
    assert int(_footer(streams["Markers"])["sample_count"][0]) == 2


def test_file_cut_inside_a_samples_chunk_keeps_earlier_chunks(tmp_path: Path) -> None:
    path = tmp_path / "full.xdf"
    x = np.arange(600, dtype=np.float32).reshape(300, 2)
    t = np.arange(300) / 100.0
    with XDFWriter(path) as w:
        sid = w.add_stream("S", "EMG", ["a", "b"], "uV", 100.0, "float32")
        w.write_samples(sid, x[:200], t[:200])
        w.flush()
        size_before_last = path.stat().st_size
        w.write_samples(sid, x[200:], t[200:])
    cut = tmp_path / "cut.xdf"
    # Cut 25 bytes into the last Samples chunk: inside its first sample.
    cut.write_bytes(path.read_bytes()[: size_before_last + 25])
    s = _load(cut)["S"]
    np.testing.assert_array_equal(s["time_series"], x[:200])
    np.testing.assert_array_equal(s["time_stamps"], t[:200])


# ---------------------------------------------------------------------------------------------- validation


def test_wrong_shapes_raise_value_error_naming_the_stream(tmp_path: Path) -> None:
    with XDFWriter(tmp_path / "v.xdf") as w:
        emg = w.add_stream("EMG-main", "EMG", ["a", "b", "c", "d"], "uV", 2048.0, "float32")
        mk = w.add_stream("Markers-main", "Markers", ["m", "n"], "", 0.0, "string")
        w.flush()
        size = (tmp_path / "v.xdf").stat().st_size
        with pytest.raises(ValueError, match=r"EMG-main.*4 channels.*got 3 channels"):
            w.write_samples(emg, np.zeros((5, 3)), np.arange(5.0))
        with pytest.raises(ValueError, match="EMG-main"):
            w.write_samples(emg, np.zeros(5), np.arange(5.0))
        with pytest.raises(ValueError, match=r"EMG-main.*5 samples but 4 timestamps"):
            w.write_samples(emg, np.zeros((5, 4)), np.arange(4.0))
        with pytest.raises(ValueError, match=r"EMG-main.*finite"):
            w.write_samples(emg, np.zeros((2, 4)), [0.0, np.nan])
        with pytest.raises(ValueError, match=r"Markers-main.*2 channels.*1 values"):
            w.write_samples(mk, [["a", "b"], ["c"]], [0.0, 1.0])
        with pytest.raises(TypeError, match="Markers-main"):
            w.write_samples(mk, [["a", 3]], [0.0])
        with pytest.raises(TypeError, match="Markers-main"):
            w.write_samples(mk, ["ab"], [0.0])  # a str is not a sample of 2 str
        with pytest.raises(TypeError, match="EMG-main"):
            w.write_samples(emg, np.zeros((1, 4), dtype=complex), [0.0])
        with pytest.raises(ValueError, match="unknown XDF stream id 9"):
            w.write_samples(9, np.zeros((1, 4)), [0.0])
        w.flush()
        assert (tmp_path / "v.xdf").stat().st_size == size  # rejected calls wrote nothing
        assert w.summary(emg).sample_count == 0


def test_integer_range_and_float_truncation(tmp_path: Path) -> None:
    with XDFWriter(tmp_path / "r.xdf") as w:
        sid = w.add_stream("Short", "Misc", ["a"], "count", 0.0, "int16")
        with pytest.raises(ValueError, match=r"Short.*outside -32768\.\.32767"):
            w.write_samples(sid, np.array([[40000]]), [0.0])
        with pytest.raises(ValueError, match=r"Short.*NaN"):
            w.write_samples(sid, np.array([[np.nan]]), [0.0])
        w.write_samples(sid, np.array([[2.7], [-2.7], [32767.9]]), [0.0, 1.0, 2.0])
    s = _load(tmp_path / "r.xdf")["Short"]
    np.testing.assert_array_equal(s["time_series"], [[2], [-2], [32767]])


def test_add_stream_validation(tmp_path: Path) -> None:
    with XDFWriter(tmp_path / "a.xdf") as w:
        with pytest.raises(ValueError, match="channel_format 'float16'"):
            w.add_stream("S", "EMG", ["a"], "uV", 100.0, "float16")
        with pytest.raises(ValueError, match="2 channel names but 3 units"):
            w.add_stream("S", "EMG", ["a", "b"], ["uV", "uV", "uV"], 100.0, "float32")
        with pytest.raises(ValueError, match="rate_hz"):
            w.add_stream("S", "EMG", ["a"], "uV", -1.0, "float32")
        with pytest.raises(ValueError, match="at least one channel"):
            w.add_stream("S", "EMG", [], "uV", 1.0, "float32")
        with pytest.raises(TypeError, match="not a str"):
            w.add_stream("S", "EMG", "ab", "uV", 1.0, "float32")
        with pytest.raises(ValueError, match="reserved"):
            w.add_stream("S", "EMG", ["a"], "uV", 1.0, "float32", desc={"channels": {}})
        with pytest.raises(ValueError, match="not a valid XML element name"):
            w.add_stream("S", "EMG", ["a"], "uV", 1.0, "float32", desc={"bad key": 1})
        with pytest.raises(ValueError, match=r"XML 1\.0 cannot represent"):
            w.add_stream("S\x00", "EMG", ["a"], "uV", 1.0, "float32")
        assert w.add_stream("S", "EMG", ["a"], "uV", 1.0, "float32") == 1  # ids only count real streams


# ---------------------------------------------------------------------------------------------- lifecycle


def test_close_is_idempotent_and_closed_writer_rejects_writes(tmp_path: Path) -> None:
    w = XDFWriter(tmp_path / "c.xdf")
    sid = w.add_stream("S", "EMG", ["a"], "uV", 1.0, "float32")
    w.close()
    w.close()
    assert w.closed
    with pytest.raises(ValueError, match="closed"):
        w.write_samples(sid, np.zeros((1, 1)), [0.0])
    with pytest.raises(ValueError, match="closed"):
        w.flush()
    assert len(_load(tmp_path / "c.xdf")) == 1


def test_context_manager_writes_footers_when_the_body_raises(tmp_path: Path) -> None:
    path = tmp_path / "e.xdf"
    with pytest.raises(RuntimeError, match="boom"), XDFWriter(path) as w:
        sid = w.add_stream("S", "EMG", ["a"], "uV", 10.0, "double64")
        w.write_samples(sid, [[1.0], [2.0]], [0.0, 0.1])
        raise RuntimeError("boom")
    assert w.closed
    assert int(_footer(_load(path)["S"])["sample_count"][0]) == 2


def test_existing_file_is_not_overwritten_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "x.xdf"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        XDFWriter(path)
    assert path.read_bytes() == b"precious"
    with XDFWriter(path, overwrite=True):
        pass
    assert path.read_bytes().startswith(b"XDF:")


def test_empty_write_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "z.xdf"
    with XDFWriter(path) as w:
        num = w.add_stream("N", "EMG", ["a", "b"], "uV", 10.0, "float32")
        txt = w.add_stream("T", "Markers", ["m"], "", 0.0, "string")
        w.flush()
        size = path.stat().st_size
        w.write_samples(num, np.zeros((0, 2)), np.zeros(0))
        w.write_samples(txt, [], [])
        w.flush()
        assert path.stat().st_size == size
        assert w.summary(num).sample_count == 0


# ---------------------------------------------------------------------------------------------- byte layout


def test_varlen_encoding_uses_smallest_width() -> None:
    assert _encode_varlen(0) == b"\x01\x00"
    assert _encode_varlen(255) == b"\x01\xff"
    assert _encode_varlen(256) == b"\x04" + struct.pack("<I", 256)
    assert _encode_varlen(2**32 - 1) == b"\x04\xff\xff\xff\xff"
    assert _encode_varlen(2**32) == b"\x08" + struct.pack("<Q", 2**32)
    with pytest.raises(ValueError, match="unsigned"):
        _encode_varlen(-1)


def test_chunk_bytes_match_the_specification(tmp_path: Path) -> None:
    path = tmp_path / "b.xdf"
    with XDFWriter(path) as w:
        sid = w.add_stream("S", "Misc", ["a"], "count", 0.0, "int16")
        w.flush()
        start = path.stat().st_size
        w.write_samples(sid, np.array([[-2]]), [1.5])
        w.write_clock_offset(sid, 3.0, -0.25)
        w.write_boundary()
        w.flush()
        raw = path.read_bytes()[start:]
    samples_content = struct.pack("<I", sid) + b"\x01\x01" + b"\x08" + struct.pack("<d", 1.5)
    samples_content += struct.pack("<h", -2)
    expected = b"\x01" + bytes([2 + len(samples_content)]) + b"\x03\x00" + samples_content
    expected += b"\x01\x16\x04\x00" + struct.pack("<Idd", sid, 3.0, -0.25)
    expected += b"\x01\x12\x05\x00" + BOUNDARY_UUID
    assert raw == expected
    assert path.read_bytes()[:4] == b"XDF:"


# ---------------------------------------------------------------------------------------------- scale


def test_many_small_chunks_of_many_channels(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n, n_channels = 20480, 64
    x = rng.standard_normal((n, n_channels)).astype(np.float32)
    t = 50.0 + np.arange(n) / 2048.0
    path = tmp_path / "big.xdf"
    with XDFWriter(path) as w:
        sid = w.add_stream("HD-EMG", "EMG", [f"e{i}" for i in range(n_channels)], "uV", 2048.0, "float32")
        for a in range(0, n, 8):
            w.write_samples(sid, x[a : a + 8], t[a : a + 8])
    s = _load(path)["HD-EMG"]
    np.testing.assert_array_equal(s["time_series"], x)
    np.testing.assert_array_equal(s["time_stamps"], t)
    assert int(_footer(s)["sample_count"][0]) == n
