"""Recorded EMG replayed as a Source: every file format, pacing, pulse detection and bad input."""

from __future__ import annotations

import asyncio
import gzip
import os
import struct
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from acquisition.base import Source
from acquisition.files import FileChunk, FileFormatError, FileSource, open_recording
from closedloop.estimation.artifacts import detect_pulses
from closedloop.recording.xdf import XDFWriter
from closedloop.types import Chunk

RATE = 2048.0
DURATION_S = 3.0
NAMES = ("EMG1", "EMG2", "EMG3")
PULSES_S = (0.5, 1.25, 2.0)  # on exact samples at 2048 Hz (1024, 2560, 4096)


def _signal(rate: float = RATE, duration_s: float = DURATION_S, seed: int = 0) -> np.ndarray:
    """Three channels of sines plus noise, ``(n, 3)`` microvolts."""
    n = round(rate * duration_s)
    t = np.arange(n) / rate
    rng = np.random.default_rng(seed)
    freqs = np.array([23.0, 57.0, 91.0])
    return 150.0 * np.sin(2 * np.pi * t[:, None] * freqs) + 20.0 * rng.standard_normal((n, 3))


def _with_artifacts(uv: np.ndarray, samples: list[int], peak_uv: float = 3000.0) -> np.ndarray:
    """Stimulation-like artifacts (a sharp biphasic spike decaying over ~2 ms) at ``samples``."""
    x = uv.copy()
    shape = peak_uv * np.array([1.0, -0.6, 0.3, -0.13, 0.05])
    for k in samples:
        x[k : k + shape.size] += shape[: x.shape[0] - k, None]
    return x


def _replay(path: Path | str, **kwargs) -> tuple[FileSource, list[Chunk]]:
    """Run a FileSource to the end (as fast as possible unless ``speed`` is given)."""

    async def run() -> tuple[FileSource, list[Chunk]]:
        src = FileSource(path, **kwargs)
        out = []
        async with src:
            assert isinstance(src, Source)
            async for chunk in src:
                out.append(chunk)
            src.recording  # still valid at the end  # noqa: B018
        return src, out

    return asyncio.run(run())


def _check_replay(
    src: FileSource,
    chunks: list[Chunk],
    expect_uv: np.ndarray,
    tol_v: np.ndarray | float,
    rate: float,
    names: tuple[str, ...],
    chunk_size: int = 256,
) -> np.ndarray:
    """Common checks of a replay; returns all pulse times of the chunks."""
    assert src.info.rate_hz == pytest.approx(rate)
    assert src.info.channel_names == names
    assert src.info.units == ("V",) * len(names)
    assert src.info.type == "EMG"
    assert src.dtype == np.float64
    assert src.progress == 1.0
    assert all(len(c) == chunk_size for c in chunks[:-1]) and 0 < len(chunks[-1]) <= chunk_size
    x = np.concatenate([c.samples for c in chunks])
    assert x.dtype == np.float64 and x.shape == expect_uv.shape == (src.n_samples, len(names))
    err = np.abs(x - expect_uv * 1e-6)
    assert np.all(err <= tol_v), f"largest error {err.max():.3g} V"
    ts = np.concatenate([c.timestamps for c in chunks])
    if src.recording.timestamps is None:
        np.testing.assert_allclose(ts, np.arange(src.n_samples) / rate, rtol=0, atol=1e-12)
    # every pulse lies in the chunk that holds its (nearest) sample
    times = []
    for c in chunks:
        if c.pulse_times is None:
            continue
        for t in c.pulse_times:
            k = np.searchsorted(c.timestamps, t - 0.5 / rate)
            assert k < len(c), "a pulse was attached to the wrong chunk"
        times.append(c.pulse_times)
    return np.concatenate(times) if times else np.empty(0)


def _edf_resolution(path: Path) -> np.ndarray:
    """Per-signal resolution (physical units per digital step) from an EDF/BDF header."""
    head = path.read_bytes()
    ns = int(head[252:256])
    base = 256 + ns * (16 + 80 + 8)

    def fields(offset: int) -> np.ndarray:
        return np.array([float(head[offset + 8 * i : offset + 8 * i + 8]) for i in range(ns)])

    pmin, pmax = fields(base), fields(base + 8 * ns)
    dmin, dmax = fields(base + 16 * ns), fields(base + 24 * ns)
    return (pmax - pmin) / (dmax - dmin)


def _mne_raw(uv: np.ndarray, rate: float, ch_type: str = "emg", pulses=PULSES_S, descriptions=None):
    import mne

    info = mne.create_info(list(NAMES), rate, ch_type)
    raw = mne.io.RawArray(uv.T * 1e-6, info, verbose="error")
    if pulses:
        desc = descriptions or ["stim"] * len(pulses)
        raw.set_annotations(mne.Annotations([*pulses, 0.8], [0.0] * (len(pulses) + 1), [*desc, "rest"]))
    return raw


# ----------------------------------------------------------------------------------- MNE formats


def test_edf_exported_by_mne(tmp_path: Path) -> None:
    import mne

    uv = _signal()
    path = tmp_path / "rec.edf"
    mne.export.export_raw(path, _mne_raw(uv, RATE), add_ch_type=True, verbose="error")
    src, chunks = _replay(path)
    res_v = _edf_resolution(path)[:3] * 1e-6  # the signals are in uV (the 4th signal: EDF Annotations)
    labels = tuple(f"EMG {n}" for n in NAMES)  # MNE writes the type word; the name is the whole header label
    pulses = _check_replay(src, chunks, uv, 0.5 * res_v * (1 + 1e-6) + 1e-15, RATE, labels)
    rec = src.recording
    assert rec.format == "EDF" and rec.original_units == ("uV",) * 3
    assert rec.extra["channel_rule"] == "type emg"  # typed by the labels' EDF+ type word "EMG"
    assert rec.pulse_source == "annotations"
    np.testing.assert_allclose(pulses, PULSES_S, atol=1e-6)
    np.testing.assert_allclose(rec.pulse_times_s, PULSES_S, atol=1e-6)


@pytest.mark.parametrize(("ext", "fmt", "units"), [(".vhdr", "BrainVision", "uV"), (".set", "EEGLAB", "uV")])
def test_brainvision_and_eeglab_exported_by_mne(tmp_path: Path, ext: str, fmt: str, units: str) -> None:
    import mne

    uv = _signal(seed=1)
    path = tmp_path / f"rec{ext}"
    mne.export.export_raw(path, _mne_raw(uv, RATE, descriptions=["Stim", "pulse", "TRIGGER"]), verbose="error")
    src, chunks = _replay(path, chunk_size=300)
    # both store float32 microvolts: relative precision 2^-24
    pulses = _check_replay(src, chunks, uv, np.abs(uv).max() * 1e-6 * 2.0**-23, RATE, NAMES, chunk_size=300)
    rec = src.recording
    assert rec.format == fmt and rec.original_units == (units,) * 3
    assert rec.pulse_source == "annotations"  # "rest" is not a pulse, the case-insensitive others are
    np.testing.assert_allclose(pulses, PULSES_S, atol=1e-6)


def test_fif_with_annotations_and_first_samp(tmp_path: Path) -> None:
    import mne

    uv = _signal(seed=2)
    raw = _mne_raw(uv, RATE)
    raw = mne.io.RawArray(raw.get_data(), raw.info, first_samp=500, verbose="error")
    raw.set_annotations(mne.Annotations(list(PULSES_S), [0.0] * 3, ["stim"] * 3))  # from the first sample
    path = tmp_path / "rec_raw.fif"
    raw.save(path, verbose="error")
    src, chunks = _replay(path, chunk_size=512)
    pulses = _check_replay(src, chunks, uv, np.abs(uv).max() * 1e-6 * 2.0**-23, RATE, NAMES, chunk_size=512)
    rec = src.recording
    assert rec.format == "FIF" and rec.original_units == ("V",) * 3 and rec.extra["channel_rule"] == "type emg"
    np.testing.assert_allclose(pulses, PULSES_S, atol=1e-6)  # relative to the first sample, not to first_samp


def test_fif_gz_and_channel_selection(tmp_path: Path) -> None:
    uv = _signal(seed=3)
    path = tmp_path / "rec_raw.fif.gz"
    _mne_raw(uv, RATE).save(path, verbose="error")
    with open_recording(path, channels=["EMG3", "EMG1"]) as reader:
        assert reader.info.channel_names == ("EMG3", "EMG1")
        x = reader.read(100, 400)
        assert x.shape == (300, 2)
        np.testing.assert_allclose(x, uv[100:400, [2, 0]] * 1e-6, rtol=2.0**-23, atol=1e-12)
        with pytest.raises(ValueError, match="range"):
            reader.read(0, reader.info.n_samples + 1)


def _write_bdf(path: Path, uv: np.ndarray, rate: int, status: np.ndarray) -> np.ndarray:
    """A minimal BDF file: 1-s records, 24-bit samples, three 'EMG ...' signals and a Status channel.

    Returns the resolution (uV per digital step) of each EMG signal.
    """
    n, c = uv.shape
    assert n % rate == 0
    dmin, dmax = -(2**23), 2**23 - 1
    pmin = np.floor(uv.min(axis=0)) - 1.0
    pmax = np.ceil(uv.max(axis=0)) + 1.0
    cal = (pmax - pmin) / (dmax - dmin)
    dig = np.rint((uv - pmin) / cal + dmin).astype(np.int64)
    dig = np.column_stack([dig, status.astype(np.int64)])
    labels = [f"EMG {name}" for name in NAMES] + ["Status"]
    units = ["uV"] * c + ["Boolean"]
    phys = [(f"{lo:g}", f"{hi:g}") for lo, hi in zip(pmin, pmax, strict=True)] + [(str(dmin), str(dmax))]
    ns = c + 1

    def f(value: object, width: int) -> bytes:
        text = str(value).encode("ascii")
        assert len(text) <= width
        return text.ljust(width)

    n_rec = n // rate
    head = b"\xffBIOSEMI" + f("X X X X", 80) + f("Startdate 01-JAN-2024 X X X", 80) + f("01.01.24", 8)
    head += f("12.00.00", 8) + f(256 * (ns + 1), 8) + f("24BIT", 44) + f(n_rec, 8) + f(1, 8) + f(ns, 4)
    head += b"".join(f(x, 16) for x in labels) + b"".join(f("", 80) for _ in labels)
    head += b"".join(f(u, 8) for u in units)
    head += b"".join(f(lo, 8) for lo, _ in phys) + b"".join(f(hi, 8) for _, hi in phys)
    head += b"".join(f(dmin, 8) for _ in labels) + b"".join(f(dmax, 8) for _ in labels)
    head += b"".join(f("", 80) for _ in labels) + b"".join(f(rate, 8) for _ in labels)
    head += b"".join(f("", 32) for _ in labels)
    assert len(head) == 256 * (ns + 1)
    # record r holds, channel after channel, that channel's `rate` samples as 24-bit little-endian integers
    records = dig.reshape(n_rec, rate, ns).transpose(0, 2, 1).astype("<i4")
    data = records.reshape(-1, 1).view(np.uint8)[:, :3].tobytes()
    path.write_bytes(head + data)
    return cal


def test_bdf_own_writer_with_status_channel(tmp_path: Path) -> None:
    rate = 2048
    uv = _signal(rate=rate)
    status = np.zeros(uv.shape[0])
    onsets = [round(p * rate) for p in PULSES_S]
    for k in onsets:
        status[k : k + 20] = 1  # a trigger line high for ~10 ms
    status += 2**16  # a BioSemi status flag above the trigger bits: not a pulse
    path = tmp_path / "rec.bdf"
    res_uv = _write_bdf(path, uv, rate, status)
    src, chunks = _replay(path, chunk_size=200)
    labels = tuple(f"EMG {n}" for n in NAMES)  # the header labels, type word included
    pulses = _check_replay(src, chunks, uv, 0.5 * res_uv * 1e-6 * (1 + 1e-6) + 1e-15, rate, labels, chunk_size=200)
    rec = src.recording
    assert rec.format == "BDF" and rec.original_units == ("uV",) * 3 and rec.extra["channel_rule"] == "type emg"
    assert rec.pulse_source == "stim channel:Status"
    np.testing.assert_allclose(pulses, np.array(onsets) / rate, atol=1e-12)


def _write_gdf(path: Path, uv: np.ndarray, rate: int, events: list[int], event_type: int) -> np.ndarray:
    """A minimal GDF 1.25 file (as MNE's reader expects it): int16 samples, 1-s records, an event table.

    Returns the resolution (uV per digital step) of each signal.
    """
    n, c = uv.shape
    assert n % rate == 0
    n_rec = n // rate
    dmin, dmax = -32767, 32767
    pmin, pmax = uv.min(axis=0), uv.max(axis=0)
    cal = (pmax - pmin) / (dmax - dmin)
    dig = np.rint((uv - pmin) / cal + dmin).astype("<i2")
    head = b"GDF 1.25" + b"X X".ljust(80) + b"rec".ljust(80) + b"2024010112000000"
    head += struct.pack("<q", 256 * (c + 1)) + bytes(24) + bytes(20)
    head += struct.pack("<q", n_rec) + struct.pack("<II", 1, 1) + struct.pack("<I", c)
    assert len(head) == 256
    head += b"".join(name.encode().ljust(16) for name in NAMES) + bytes(80 * c)
    head += b"".join(b"uV".ljust(8) for _ in range(c))
    head += struct.pack(f"<{c}d", *pmin) + struct.pack(f"<{c}d", *pmax)
    head += struct.pack(f"<{c}q", *[dmin] * c) + struct.pack(f"<{c}q", *[dmax] * c)
    head += bytes(80 * c) + struct.pack(f"<{c}i", *[rate] * c) + struct.pack(f"<{c}i", *[3] * c)  # 3: int16
    head += bytes(32 * c)
    assert len(head) == 256 * (c + 1)
    data = dig.reshape(n_rec, rate, c).transpose(0, 2, 1).tobytes()
    table = struct.pack("<B", 1) + struct.pack("<I", rate)[:3] + struct.pack("<I", len(events))
    table += struct.pack(f"<{len(events)}I", *[k + 1 for k in events])  # positions are 1-based
    table += struct.pack(f"<{len(events)}H", *[event_type] * len(events))
    path.write_bytes(head + data + table)
    return cal


def test_gdf_own_writer_with_events(tmp_path: Path) -> None:
    rate = 2048
    uv = _signal(rate=rate, seed=4)
    onsets = [round(p * rate) for p in PULSES_S]
    path = tmp_path / "rec.gdf"
    res_uv = _write_gdf(path, uv, rate, onsets, 0x0300)
    # GDF events become annotations named by their numeric type (0x0300 = 768): match it explicitly
    src, chunks = _replay(path, pulse_annotation=r"^768$")
    pulses = _check_replay(src, chunks, uv, 0.5 * res_uv * 1e-6 * (1 + 1e-6) + 1e-15, rate, NAMES)
    rec = src.recording
    assert rec.format == "GDF" and rec.original_units == ("uV",) * 3
    assert rec.extra["channel_rule"].startswith("unit V")  # GDF has no channel types: the volts rule
    assert rec.pulse_source == "annotations"
    np.testing.assert_allclose(pulses, PULSES_S, atol=1e-9)
    # with the default pattern, the numeric event codes are no pulses: the file replays with detection
    with open_recording(path) as reader:
        assert reader.info.pulse_source == "none"


# ------------------------------------------------------------------------------------------- XDF


def _timestamps(n: int, rate: float, t0: float = 8123.456789) -> np.ndarray:
    rng = np.random.default_rng(7)
    return t0 + np.arange(n) / rate + rng.uniform(-2e-5, 2e-5, n)  # jitter: must be kept exactly


def test_xdf_closedloop_session_with_pulses_stream(tmp_path: Path) -> None:
    uv = _signal(seed=5)
    n = uv.shape[0]
    ts = _timestamps(n, RATE)
    pulse_t = ts[[round(p * RATE) for p in PULSES_S]] + 1.3e-4  # between samples, as a live session sends them
    amps = np.array([5.0, 7.5, 10.0])
    path = tmp_path / "session.xdf"
    with XDFWriter(path) as w:
        emg = w.add_stream("EMG", "EMG", NAMES, ["microvolts"], RATE, "float32", source_id="amp")
        pulses = w.add_stream(
            "Pulses",
            "Pulses",
            ("channel", "amplitude_ma", "pulse_width_us", "charge_uc", "requested_ma"),
            ("index", "mA", "us", "uC", "mA"),
            0.0,
            "double64",
        )
        for a in range(0, n, 1000):  # chunks, as the session recorder writes them
            w.write_samples(emg, uv[a : a + 1000], ts[a : a + 1000])
        rows = np.column_stack([np.zeros(3), amps, np.full(3, 300.0), amps * 0.3, amps])
        w.write_samples(pulses, rows, pulse_t)
    src, chunks = _replay(path)
    stored = uv.astype(np.float32).astype(np.float64)
    x = np.concatenate([c.samples for c in chunks])
    np.testing.assert_array_equal(x, stored * 1e-6)  # bit-identical to float32 uV x 1e-6
    _check_replay(src, chunks, stored, 0.0, RATE, NAMES)
    np.testing.assert_array_equal(np.concatenate([c.timestamps for c in chunks]), ts)  # exact, not dejittered
    rec = src.recording
    assert rec.format == "XDF" and rec.original_units == ("microvolts",) * 3
    np.testing.assert_array_equal(rec.timestamps, ts)
    assert rec.pulse_source == "Pulses stream"
    np.testing.assert_array_equal(rec.pulse_amplitudes_ma, amps)
    np.testing.assert_allclose(rec.pulse_times_s, pulse_t - ts[0], atol=1e-12)
    got = [(c, t) for c in chunks for t in c.pulse_times]
    np.testing.assert_array_equal([t for _, t in got], pulse_t)  # the recorded times themselves
    assert all(isinstance(c, FileChunk) for c in chunks)
    np.testing.assert_array_equal(np.concatenate([c.pulse_amplitudes_ma for c, _ in got]), amps)
    assert rec.extra["header"]["version"] == "1.0" and rec.meas_date is not None


def test_xdf_marker_stream_and_missing_units(tmp_path: Path) -> None:
    uv = _signal(seed=6)
    n = uv.shape[0]
    ts = _timestamps(n, RATE, t0=50.0)
    path = tmp_path / "labrecorder.xdf"
    with XDFWriter(path) as w:
        w.add_stream("Audio", "Audio", ["a"], ["V"], 100.0, "float32")
        emg = w.add_stream("Amp", "EMG", NAMES, [""], RATE, "double64")  # no units in the header
        mk = w.add_stream("Events", "Markers", ["label"], [""], 0.0, "string")
        w.write_samples(emg, uv, ts)
        marks = [(0.3, "rest"), (0.5, "stim on"), (1.25, "Pulse"), (2.0, "TRIGGER 3")]
        w.write_samples(mk, [[m] for _, m in marks], [ts[0] + t for t, _ in marks])
    src, chunks = _replay(path, chunk_size=1000)
    pulses = _check_replay(src, chunks, uv, 1e-18, RATE, NAMES, chunk_size=1000)
    rec = src.recording
    assert rec.original_units == ("assumed uV",) * 3
    assert rec.pulse_source == "markers:Events" and rec.pulse_amplitudes_ma is None
    np.testing.assert_allclose(pulses, ts[0] + np.array(PULSES_S), rtol=0, atol=1e-9)
    # the units argument fills in what the header lacks; the stream can be chosen by name
    with open_recording(path, stream="Amp", units="mV") as reader:
        assert reader.info.original_units == ("mV",) * 3
        np.testing.assert_allclose(reader.read(0, 10), uv[:10] * 1e-3, rtol=1e-15)
    # gzip-compressed XDF (.xdfz) reads the same
    xdfz = tmp_path / "labrecorder.xdfz"
    xdfz.write_bytes(gzip.compress(path.read_bytes()))
    with open_recording(xdfz) as reader:
        np.testing.assert_array_equal(reader.read(0, n), uv * 1e-6)
        np.testing.assert_array_equal(reader.info.timestamps, ts)


# ---------------------------------------------------------------------------- WFDB, MATLAB, HDF5


def test_wfdb_record_in_millivolts(tmp_path: Path) -> None:
    onsets = [700, 2600, 4500]
    uv = _with_artifacts(_signal(seed=8), onsets)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # wfdb's use of deprecated pandas features
        import wfdb

        wfdb.wrsamp(
            "rec",
            fs=RATE,
            units=["mV"] * 3,
            sig_name=list(NAMES),
            p_signal=uv / 1000.0,
            fmt=["16"] * 3,
            write_dir=str(tmp_path),
        )
        gain = np.asarray(wfdb.rdheader(str(tmp_path / "rec")).adc_gain)  # digital steps per mV
    path = tmp_path / "rec.hea"
    src, chunks = _replay(path, detect_pulses=True)  # three pulses are no steady train: force detection
    pulses = _check_replay(src, chunks, uv, 0.5 / gain * 1e-3 * (1 + 1e-6) + 1e-15, RATE, NAMES)
    rec = src.recording
    assert rec.format == "WFDB" and rec.original_units == ("mV",) * 3
    assert rec.pulse_source == "detected"  # WFDB records carry no pulses here: found from the artifacts
    np.testing.assert_allclose(pulses, np.array(onsets) / RATE, atol=1e-12)


def test_wfdb_without_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "rec.hea"
    path.write_text("rec 1 1000 10\n")
    monkeypatch.setitem(sys.modules, "wfdb", None)  # import wfdb -> ImportError
    with pytest.raises(FileFormatError, match=r"rec\.hea: reading WFDB records needs the wfdb package: pip install"):
        open_recording(path)


def test_mat_ninapro_style(tmp_path: Path) -> None:
    from scipy.io import savemat

    uv = _signal(rate=2000.0, seed=9)
    path = tmp_path / "S1_E1_A1.mat"
    savemat(
        path,
        {
            "emg": uv * 1e-6,
            "frequency": np.array([[2000]]),
            "stimulus": np.zeros((uv.shape[0], 1)),
            "pulses": np.array(PULSES_S),
        },
    )
    src, chunks = _replay(path, units="V")
    pulses = _check_replay(src, chunks, uv, 1e-18, 2000.0, NAMES)
    rec = src.recording
    assert rec.format == "MAT" and rec.original_units == ("V",) * 3
    assert rec.pulse_source == "variable:pulses"
    np.testing.assert_allclose(pulses, PULSES_S, atol=1e-12)
    # (C, n) is transposed; without units the values are taken as microvolts, and a replay says so
    savemat(path, {"emg": uv.T, "frequency": 2000.0})
    with open_recording(path) as reader:
        assert reader.info.original_units == ("assumed uV",) * 3 and reader.info.n_samples == uv.shape[0]
        np.testing.assert_allclose(reader.read(0, uv.shape[0]), uv * 1e-6, rtol=1e-15)
    from experiments.replay import ReplayOptions, replay_file

    res = replay_file(path, tmp_path / "out", ReplayOptions(report=False))
    assert res.ok and "the file states no unit: samples taken as uV (--units)" in res.hint


@pytest.mark.parametrize(
    "fs, got",
    [
        (-5, "got -5"),
        (float("nan"), "got nan"),
        (np.array([1000.0, 2000.0]), "got float64[1, 2]"),
        ("fast", "got <U4[1]"),
    ],
)
def test_mat_with_an_invalid_rate_says_what_the_rate_variable_holds(tmp_path: Path, fs, got) -> None:
    from scipy.io import savemat

    path = tmp_path / "badrate.mat"
    savemat(path, {"emg": np.zeros((10000, 4)), "fs": fs})
    with pytest.raises(FileFormatError) as err:
        open_recording(path)
    assert str(err.value) == (f"{path}: variable 'fs' should hold the sampling rate (one number > 0, in Hz), {got}")


def test_mat_without_rate(tmp_path: Path) -> None:
    from scipy.io import savemat

    uv = _signal(rate=1000.0, duration_s=2.0, seed=10)
    path = tmp_path / "norate.mat"
    savemat(path, {"data": uv})
    with pytest.raises(FileFormatError) as err:
        open_recording(path)
    assert "norate.mat" in str(err.value) and "no sampling rate in the file: give --rate" in str(err.value)
    src, chunks = _replay(path, rate_hz=1000.0)
    _check_replay(src, chunks, uv, 1e-18, 1000.0, ("data1", "data2", "data3"))
    assert src.recording.original_units == ("assumed uV",) * 3


def test_mat_tscs_like_single_variable(tmp_path: Path) -> None:
    from scipy.io import savemat

    onsets = [900, 2100, 3300]  # at 4000 Hz
    uv = _with_artifacts(_signal(rate=4000.0, duration_s=1.0, seed=11)[:, :1], onsets) + 7.7e4  # DC offset
    path = tmp_path / "tscs.mat"
    savemat(path, {"raw_on": uv.T, "Fs": np.array([[4000]])})  # 1 x n, as the real files
    src, chunks = _replay(path, chunk_size=128, detect_pulses=True)
    pulses = _check_replay(src, chunks, uv, 1e-18, 4000.0, ("raw_on",), chunk_size=128)
    assert src.recording.original_units == ("assumed uV",) and src.recording.pulse_source == "detected"
    np.testing.assert_allclose(pulses, np.array(onsets) / 4000.0, atol=1e-12)
    # two candidate signals: ambiguous
    savemat(path, {"raw_on": uv.T, "raw_off": uv.T, "Fs": 4000})
    with pytest.raises(FileFormatError, match=r"tscs\.mat: 2 candidate signal variables .*raw_off"):
        open_recording(path)


def _write_opensignals(path: Path, adc: np.ndarray, sensors: list[str], rate: int = 1000, bits: int = 16) -> None:
    """An OpenSignals-like HDF5 file laid out as PLUX's (device group, raw/channel_N, attributes)."""
    import h5py

    numbers = list(range(1, adc.shape[1] + 1))
    with h5py.File(path, "w") as f:
        dev = f.create_group("00:07:80:3B:46:61")
        dev.attrs["sampling rate"] = np.int32(rate)
        dev.attrs["resolution"] = np.array([bits] * len(numbers), dtype=np.int32)
        dev.attrs["channels"] = np.array(numbers, dtype=np.int32)
        dev.attrs["nsamples"] = np.int32(adc.shape[0])
        dev.attrs["date"] = "2024-3-5"
        dev.attrs["time"] = "10:28:51.69"
        dev.attrs["device"] = "channeller"
        raw = dev.create_group("raw")
        raw.create_dataset("nSeq", data=(np.arange(adc.shape[0]) % 16).astype(np.uint16)[:, None])
        for num, sensor, col in zip(numbers, sensors, adc.T, strict=True):
            ds = raw.create_dataset(f"channel_{num}", data=col.astype(np.uint16)[:, None])
            ds.attrs["sensor"] = sensor
            ds.attrs["label"] = f"PORT{num}_CHN1"
        dev.create_group("events")


def test_opensignals_h5(tmp_path: Path) -> None:
    onsets = [300, 1400, 2500]
    uv = _with_artifacts(_signal(rate=1000.0, seed=12), onsets, peak_uv=1000.0)  # within the sensor's +-1.5 mV
    # the PLUX EMG transfer function, inverted: adc = (V * 1000 / 3 + 0.5) * 2^16
    adc = np.rint((uv * 1e-6 * 1000.0 / 3.0 + 0.5) * 2**16)
    adc = np.column_stack([adc[:, 0], np.full(len(adc), 30000), adc[:, 1]])  # the middle one is an ECG
    path = tmp_path / "opensignals.h5"
    _write_opensignals(path, adc, ["EMG", "ECG", "EMG"])
    src, chunks = _replay(path, detect_pulses=True)
    step_v = 3.0 / 1000.0 / 2**16
    pulses = _check_replay(src, chunks, uv[:, :2], 0.5 * step_v * (1 + 1e-6), 1000.0, ("channel_1", "channel_3"))
    rec = src.recording
    assert rec.format == "OpenSignals" and rec.original_units == ("ADC (PLUX EMG sensor transfer function)",) * 2
    assert rec.meas_date is not None and rec.meas_date.year == 2024
    assert rec.extra["attrs"]["device"] == "channeller"
    np.testing.assert_allclose(pulses, np.array(onsets) / 1000.0, atol=1e-12)
    # only non-EMG sensors: no EMG
    _write_opensignals(path, adc[:, 1:2], ["ECG"])
    with pytest.raises(FileFormatError, match=r"opensignals\.h5: no EMG channels .*'EMGBITREV'.*channel_1 \(ECG\)"):
        open_recording(path)


def test_opensignals_h5_bitalino_emg_sensor(tmp_path: Path) -> None:
    """BITalino (r)evolution's EMG sensor (``EMGBITREV``: 10-bit ADC, VCC 3.3 V, gain 1009, its data sheet's
    transfer function) beside a PLUX EMG sensor (3 V, 1000), resolutions given per column as BITalino lists
    them (nSeq, digital I/O, then A1..): each channel in volts by its own sensor's function. Before, a BITalino
    file had "no EMG channels"."""
    import h5py

    uv = _signal(rate=1000.0, seed=4)[:, :2] * 0.5  # within BITalino's +-1.64 mV
    bita = np.rint((uv[:, 0] * 1e-6 * 1009.0 / 3.3 + 0.5) * 2**10)
    plux = np.rint((uv[:, 1] * 1e-6 * 1000.0 / 3.0 + 0.5) * 2**10)
    path = tmp_path / "bitalino.h5"
    _write_opensignals(path, np.column_stack([bita, plux]), ["EMGBITREV", "EMG"], bits=10)
    with h5py.File(path, "r+") as f:
        dev = f["00:07:80:3B:46:61"]
        dev.attrs["resolution"] = np.array([4, 1, 1, 1, 1, 10, 10], dtype=np.int32)
        dev.attrs["column"] = np.array(["nSeq", "I1", "I2", "O1", "O2", "A1", "A2"], dtype=h5py.string_dtype())
    src, chunks = _replay(path)
    got = np.concatenate([c.samples for c in chunks])
    step = np.array([3.3 / 1009.0, 3.0 / 1000.0]) / 2**10  # one ADC step, volts
    assert np.all(np.abs(got - uv * 1e-6) <= 0.5 * step * (1 + 1e-9))
    # the exact transfer functions, not merely within a step: the ADC values back through them
    np.testing.assert_allclose(got[:, 0], (bita / 2**10 - 0.5) * 3.3 / 1009.0, rtol=1e-12, atol=0.0)
    np.testing.assert_allclose(got[:, 1], (plux / 2**10 - 0.5) * 3.0 / 1000.0, rtol=1e-12, atol=0.0)
    rec = src.recording
    assert rec.original_units == (
        "ADC (BITalino (r)evolution EMG sensor transfer function)",
        "ADC (PLUX EMG sensor transfer function)",
    )
    assert "1009" in rec.extra["transfer_function"]["channel_1"]


# ------------------------------------------------------------------------------ pacing, detection


def _one_second_mat(tmp_path: Path, rate: float = 2000.0) -> tuple[Path, np.ndarray]:
    from scipy.io import savemat

    uv = _signal(rate=rate, duration_s=1.0, seed=13)
    path = tmp_path / "one_second.mat"
    savemat(path, {"emg": uv, "fs": rate})
    return path, uv


def test_paced_replay_takes_duration_over_speed(tmp_path: Path) -> None:
    path, _ = _one_second_mat(tmp_path)

    async def run() -> tuple[float, list[Chunk], list[float]]:
        src = FileSource(path, chunk_size=100, speed=4.0, detect_pulses=False)
        async with src:
            clocks = [src.clock()]
            t = time.perf_counter()
            chunks = []
            async for c in src:
                chunks.append(c)
                clocks.append(src.clock())
            return t, time.perf_counter() - t, chunks, clocks

    t_start, elapsed, chunks, clocks = asyncio.run(run())
    assert 0.2 <= elapsed <= 0.5, f"1 s of data at speed 4 took {elapsed:.3f} s"
    arrivals = np.array([c.t_arrival for c in chunks])
    assert np.all(np.diff(arrivals) > 0)
    # each chunk arrives no earlier than its deadline: its last sample's time / 4 after the replay started
    # (measured from before the first chunk was asked for, so a late first chunk shifts nothing)
    last_t = np.array([c.timestamps[-1] for c in chunks])
    assert np.all(arrivals - t_start >= (last_t - chunks[0].timestamps[0]) / 4.0)
    np.testing.assert_allclose(clocks, np.r_[0.0, [c.timestamps[-1] + 1 / 2000.0 for c in chunks]], atol=1e-12)
    assert all(c.pulse_times is None for c in chunks)  # no pulses in the file, detection off


def test_unpaced_replay_is_much_faster_than_real_time(tmp_path: Path) -> None:
    path, _ = _one_second_mat(tmp_path)
    t = time.perf_counter()
    _, chunks = _replay(path, chunk_size=100)
    elapsed = time.perf_counter() - t
    assert elapsed < 0.2, f"1 s of data as fast as possible took {elapsed:.3f} s"
    assert all(c.t_arrival is None for c in chunks)


def test_unpaced_replay_lets_other_tasks_run(tmp_path: Path) -> None:
    path, _ = _one_second_mat(tmp_path)

    async def run() -> int:
        ticks = 0

        async def other() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(other())
        async with FileSource(path, chunk_size=50) as src:
            async for _ in src:
                pass
        task.cancel()
        return ticks

    assert asyncio.run(run()) >= 30  # 40 chunks, the other task ran between them


@pytest.mark.parametrize("chunk_size", [100, 777])
def test_detected_pulses_come_with_their_chunks(tmp_path: Path, chunk_size: int) -> None:
    onsets = [300, 1500, 2047, 2048 * 2 - 1, 5000, 6100]  # one inside the detector's warm-up, some on borders
    uv = _with_artifacts(_signal(seed=14), onsets)
    path = tmp_path / "artifacts_raw.fif"
    _mne_raw(uv, RATE, pulses=()).save(path, verbose="error")

    async def run() -> tuple[list[Chunk], FileSource]:
        chunks = []
        async with FileSource(path, chunk_size=chunk_size, detect_pulses=True) as src:
            assert src.recording.pulse_source == "detected"
            async for c in src:
                chunks.append(c)
        return chunks, src

    chunks, src = asyncio.run(run())
    x = np.concatenate([c.samples for c in chunks])
    expected = detect_pulses(x, RATE)
    np.testing.assert_array_equal(expected, onsets)
    start = 0
    for c in chunks:
        inside = expected[(expected >= start) & (expected < start + len(c))]
        np.testing.assert_array_equal(c.pulse_times, inside / RATE)  # exactly this chunk's pulses
        start += len(c)
    np.testing.assert_array_equal(src.recording.pulse_times_s, expected / RATE)
    # detection off: the same file carries no pulse information
    _, plain = _replay(path, chunk_size=chunk_size, detect_pulses=False)
    assert all(c.pulse_times is None for c in plain)


def test_file_pulses_take_precedence_over_detection(tmp_path: Path) -> None:
    uv = _with_artifacts(_signal(seed=15), [1000, 3000])
    path = tmp_path / "both_raw.fif"
    _mne_raw(uv, RATE, pulses=(1000 / RATE,)).save(path, verbose="error")
    src, chunks = _replay(path)
    assert src.recording.pulse_source == "annotations"
    np.testing.assert_allclose(np.concatenate([c.pulse_times for c in chunks]), [1000 / RATE], atol=1e-6)


# ------------------------------------------------------------------------------------- bad input


def _message(path: Path | str, **kwargs) -> str:
    with pytest.raises(FileFormatError) as err:
        open_recording(path, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg
    assert Path(path).name in msg
    return msg


def test_missing_file_and_unknown_extension(tmp_path: Path) -> None:
    assert "no such file" in _message(tmp_path / "absent.edf")
    odd = tmp_path / "x.xyz"
    odd.write_bytes(b"1234")
    msg = _message(odd)
    assert "unknown file type '.xyz'; readable: .edf .bdf .gdf .fif" in msg and ".hea .mat .h5" in msg
    eeg = tmp_path / "x.eeg"
    eeg.write_bytes(b"1234")
    assert ".vhdr" in _message(eeg)


def test_missing_file_in_file_source(tmp_path: Path) -> None:
    async def run() -> None:
        async with FileSource(tmp_path / "absent.xdf"):
            pass

    with pytest.raises(FileFormatError, match=r"absent\.xdf: no such file"):
        asyncio.run(run())


def test_truncated_edf(tmp_path: Path) -> None:
    import mne

    path = tmp_path / "cut.edf"
    mne.export.export_raw(path, _mne_raw(_signal(), RATE), verbose="error")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "truncated" in _message(path)
    path.write_bytes(data[:12])
    assert "not an EDF file (header is 12 bytes, need 256)" in _message(path)


@pytest.mark.parametrize("ext", [".fif", ".xdf", ".edf", ".bdf", ".gdf", ".mat", ".h5", ".vhdr", ".set"])
def test_corrupt_files(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"corrupt{ext}"
    path.write_bytes(np.random.default_rng(16).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    msg = _message(path)
    assert len(msg) < 400


def test_corrupt_xdf_with_magic(tmp_path: Path) -> None:
    path = tmp_path / "magic.xdf"
    path.write_bytes(b"XDF:" + np.random.default_rng(17).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    assert "no EMG stream" in _message(path)


def test_missing_channel(tmp_path: Path) -> None:
    path = tmp_path / "rec_raw.fif"
    _mne_raw(_signal(), RATE).save(path, verbose="error")
    msg = _message(path, channels=["EMG1", "EMG9"])
    assert "no channel named 'EMG9' (channels: EMG1, EMG2, EMG3)" in msg


def test_files_without_emg(tmp_path: Path) -> None:
    import mne

    info = mne.create_info(["STI 014", "STI 015"], RATE, "stim")
    path = tmp_path / "stim_only_raw.fif"
    mne.io.RawArray(np.zeros((2, 2048)), info, verbose="error").save(path, verbose="error")
    assert "no EMG channels" in _message(path)

    xdf = tmp_path / "markers_only.xdf"
    with XDFWriter(xdf) as w:
        mk = w.add_stream("Events", "Markers", ["label"], [""], 0.0, "string")
        w.write_samples(mk, [["stim"]], [1.0])
    msg = _message(xdf)
    assert "no EMG stream" in msg and "'Events' (type 'Markers'" in msg


def _write_mat73(path: Path, variables: dict) -> None:
    """A MATLAB v7.3 file as MATLAB writes one: HDF5 behind a 512-byte text header, each variable a dataset
    stored transposed (MATLAB is column-major) with its MATLAB_class; char arrays as uint16 codes."""
    import h5py

    with h5py.File(path, "w", userblock_size=512) as f:
        for name, v in variables.items():
            if isinstance(v, str):
                ds = f.create_dataset(name, data=np.array([[ord(c)] for c in v], dtype=np.uint16))
                ds.attrs["MATLAB_class"] = np.bytes_("char")
            elif isinstance(v, dict):
                g = f.create_group(name)
                g.attrs["MATLAB_class"] = np.bytes_("struct")
            else:
                a = np.atleast_2d(np.asarray(v, dtype=np.float64))
                ds = f.create_dataset(name, data=a.T)
                ds.attrs["MATLAB_class"] = np.bytes_("double")
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Dec  7 12:00:00 2026 HDF5 schema 1.00 .")


def test_mat_v73_reads_like_older_versions(tmp_path: Path) -> None:
    """A v7.3 (HDF5) file gives the same samples, rate, names, units and pulses as the same variables saved by
    scipy's savemat (v5), which test_mat_ninapro_style checks against what was written."""
    from scipy.io import savemat

    uv = _signal(rate=2000.0, seed=12)
    variables = {"emg": uv * 1e-3, "frequency": 2000.0, "pulses": np.array(PULSES_S), "units": "mV", "info": {}}
    v73, v5 = tmp_path / "v73.mat", tmp_path / "v5.mat"
    _write_mat73(v73, variables)
    savemat(v5, {k: v for k, v in variables.items() if k != "info"})
    with open_recording(v73) as a, open_recording(v5) as b:
        assert a.info.extra["mat_version"] == "7.3 (HDF5)"
        assert (a.info.rate_hz, a.info.channel_names, a.info.original_units) == (2000.0, NAMES, ("mV",) * 3)
        assert (a.info.channel_names, a.info.original_units, a.info.pulse_source) == (
            b.info.channel_names,
            b.info.original_units,
            b.info.pulse_source,
        )
        np.testing.assert_array_equal(a.read(0, a.info.n_samples), b.read(0, b.info.n_samples))
        np.testing.assert_allclose(a.info.pulse_times_s, PULSES_S, atol=1e-12)
    np.testing.assert_allclose(open_recording(v73).read(100, 200), uv[100:200] * 1e-6, rtol=1e-12)


def test_mat_v73_without_a_signal_lists_what_it_holds(tmp_path: Path) -> None:
    path = tmp_path / "structs.mat"
    _write_mat73(path, {"trial": {}, "fs": 1000.0})
    msg = _message(path)
    assert "structs.mat" in msg and "no signal variable" in msg and "trial <struct>" in msg
    path.write_bytes(b"MATLAB 7.3 MAT-file" + bytes(600))  # the header, and no HDF5 behind it
    assert "not a readable MATLAB v7.3 (HDF5) file" in _message(path)


def test_wrong_arguments() -> None:
    from closedloop.errors import ConfigError

    with pytest.raises(ConfigError):
        FileSource("x.edf", chunk_size=0)
    with pytest.raises(ConfigError):
        FileSource("x.edf", speed=-1.0)
    with pytest.raises(ConfigError):
        FileSource("x.edf", detect_pulses="sometimes")
    with pytest.raises(ConfigError):
        FileSource("x.edf", units="furlongs")
    with pytest.raises(ConfigError):
        FileSource("x.edf", pulse_annotation="(unclosed")


# ------------------------------------------------------------------------------ real recordings


def _real(name: str) -> Path:
    env = os.environ.get("CLOSEDLOOP_DATA")
    here = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    folder = here if here.is_dir() or not env else Path(env)
    path = folder / name
    if not path.is_file():
        pytest.skip(f"real recording {name} not found in {folder} (set CLOSEDLOOP_DATA to its folder)")
    return path


def test_real_tscs_recording() -> None:
    path = _real("tscs_SingleCh_StimON.mat")
    src, chunks = _replay(path, chunk_size=1024)
    rec = src.recording
    assert rec.rate_hz == 4000.0 and rec.channel_names == ("raw_on",) and rec.original_units == ("assumed uV",)
    assert rec.pulse_source == "detected"
    pulses = np.concatenate([c.pulse_times for c in chunks])
    assert len(pulses) > 3000
    assert 1.0 / np.median(np.diff(pulses)) == pytest.approx(30.0, abs=0.5)


def test_real_opensignals_recording() -> None:
    path = _real("bsnb_emg_bursts.h5")
    with open_recording(path) as reader:
        info = reader.info
        assert info.format == "OpenSignals" and info.rate_hz == 1000.0 and info.n_channels == 1
        x = reader.read(0, info.n_samples)
    assert np.all(np.abs(x) <= 1.5e-3)
    assert np.ptp(x) > 1e-4  # real EMG bursts, not a flat line


def test_stim_channel_with_an_idle_level_counts_each_event_once(tmp_path: Path) -> None:
    """A trigger line that rests at 255 and goes to 511 for each pulse: the rise is the pulse, the return to
    the resting level is not another (it was: every pulse counted twice)."""
    import mne

    uv = _signal()
    stim = np.full(uv.shape[0], 255.0)
    starts = (np.asarray(PULSES_S) * RATE).astype(int)
    for a in starts:
        stim[a : a + 4] = 511.0
    stim[starts[-1] + 200 : starts[-1] + 204] = 7.0  # another code: an event too
    info = mne.create_info([*NAMES, "STI"], RATE, ["emg"] * len(NAMES) + ["stim"])
    raw = mne.io.RawArray(np.vstack([uv.T * 1e-6, stim]), info, verbose="error")
    path = tmp_path / "idle_raw.fif"
    raw.save(path, verbose="error")
    rec = open_recording(path).info
    assert rec.pulse_source == "stim channel:STI"
    np.testing.assert_allclose(rec.pulse_times_s, [*(starts / RATE), (starts[-1] + 200) / RATE])


def test_pulse_times_on_one_sample_count_once_and_pulses_outside_are_noted(tmp_path: Path) -> None:
    """An annotation written twice, or twice within a sample, is one pulse; pulse times outside the recording are
    dropped with a note (they were dropped silently), as the replay's hint says."""
    from scipy.io import savemat

    from experiments.replay import ReplayOptions, replay_file

    twice = [*PULSES_S, *PULSES_S, PULSES_S[0] + 0.1 / RATE]
    path = tmp_path / "twice_raw.fif"
    _mne_raw(_signal(), RATE, pulses=twice).save(path, verbose="error")
    rec = open_recording(path).info
    np.testing.assert_allclose(rec.pulse_times_s, PULSES_S)
    assert rec.extra["warnings"] == ["4 pulse time(s) on the sample of the pulse before them counted once"]
    res = replay_file(path, tmp_path / "out", ReplayOptions(report=False))
    assert res.ok and res.values["pulses"] == len(PULSES_S) and "counted once" in res.hint
    # MNE drops annotations beyond the data itself; a .mat file's pulse times are taken as they are
    mat = tmp_path / "late.mat"
    savemat(mat, {"emg": _signal() * 1e-6, "fs": RATE, "pulses": [*PULSES_S, DURATION_S + 5.0]})
    rec = open_recording(mat, units="V").info
    np.testing.assert_allclose(rec.pulse_times_s, PULSES_S)
    assert rec.extra["warnings"] == ["1 pulse time(s) outside the recording ignored"]
    savemat(mat, {"emg": _signal() * 1e-6, "fs": RATE, "pulses": np.asarray(PULSES_S) * RATE})  # in samples
    rec = open_recording(mat, units="V").info
    assert rec.pulse_source == "none" and rec.extra["warnings"] == [
        "3 pulse time(s) outside the recording ignored (all of them)"
    ]


def test_a_pulse_marker_that_matches_nothing_is_said(tmp_path: Path) -> None:
    from experiments.replay import ReplayOptions, replay_file

    path = tmp_path / "a_raw.fif"
    _mne_raw(_with_artifacts(_signal(), [int(t * RATE) for t in PULSES_S]), RATE).save(path, verbose="error")
    res = replay_file(path, tmp_path / "out", ReplayOptions(report=False, pulse_marker="^FES$"))
    assert res.ok
    assert "--pulse-marker '^FES$' matched no annotation or marker" in res.hint
    assert "the file's annotations are 'rest', 'stim'" in res.hint


def test_a_detected_train_with_gaps_says_pulses_seem_missed(tmp_path: Path) -> None:
    """Artifacts at 25 Hz with every third one absent from the data (as when detection misses them): the train is
    taken, and the replay says about how many pulses it lacks; a complete train says nothing."""
    from experiments.replay import ReplayOptions, replay_file

    period = round(RATE / 25)
    every = list(range(200, round(8 * RATE) - 200, period))
    for name, kept, missed in (("full", every, 0), ("gaps", [k for i, k in enumerate(every) if i % 3 != 2], None)):
        path = tmp_path / f"{name}_raw.fif"
        _mne_raw(_with_artifacts(_signal(duration_s=8.0, seed=15), kept), RATE, pulses=()).save(path, verbose="error")
        res = replay_file(path, tmp_path / name, ReplayOptions(report=False))
        assert res.ok and res.values["pulse_source"] == "detected" and res.values["pulses"] == len(kept)
        if missed == 0:
            assert "seem missed" not in res.hint
        else:
            absent = len([k for k in every if kept[0] < k < kept[-1] and k not in kept])  # gaps inside the train
            assert f"about {absent} pulses of the detected train seem missed" in res.hint
