"""MNE-format edge cases: stim-channel events, EDF/BDF labels and types, FIF files without EMG, EDF signals of
different rates and EDF signals without a gain."""

from __future__ import annotations

import asyncio
from pathlib import Path

import mne
import numpy as np
import pytest

from acquisition.files import FileFormatError, FileSource, open_recording

RATE = 1000.0


def _replay(path: Path, **kwargs) -> tuple[FileSource, np.ndarray, np.ndarray]:
    """Replay ``path`` to the end: the source, all samples (V) and the pulse times of the chunks (s)."""

    async def run() -> tuple[FileSource, np.ndarray, np.ndarray]:
        src = FileSource(path, chunk_size=300, detect_pulses=False, **kwargs)
        samples, pulses = [], []
        async with src:
            async for chunk in src:
                samples.append(chunk.samples)
                if chunk.pulse_times is not None:
                    pulses.append(chunk.pulse_times)
        return src, np.concatenate(samples), np.concatenate(pulses) if pulses else np.empty(0)

    return asyncio.run(run())


def _write_edf(
    path: Path,
    digital: list[np.ndarray],
    labels: list[str],
    per_record: list[int],
    *,
    physical: list[tuple[float, float]] | None = None,
    digital_range: list[tuple[int, int]] | None = None,
) -> None:
    """An EDF file of 1-s data records: signal ``i`` holds the int16 values ``digital[i]``, ``per_record[i]``
    samples per record, unit uV; default gain 0.1 uV per step (physical -3276.8..3276.7, digital full int16)."""
    ns = len(labels)
    n_rec = len(digital[0]) // per_record[0]
    physical = physical or [(-3276.8, 3276.7)] * ns
    digital_range = digital_range or [(-32768, 32767)] * ns

    def f(values: list, width: int) -> bytes:
        return b"".join(str(v).encode("ascii").ljust(width) for v in values)

    head = f(["0"], 8) + f(["X X X X"], 80) + f(["Startdate 01-JAN-2024 X X X"], 80) + f(["01.01.24", "12.00.00"], 8)
    head += f([256 * (ns + 1)], 8) + f([""], 44) + f([n_rec, 1], 8) + f([ns], 4)
    head += f(labels, 16) + f([""] * ns, 80) + f(["uV"] * ns, 8)
    head += f([p[0] for p in physical], 8) + f([p[1] for p in physical], 8)
    head += f([d[0] for d in digital_range], 8) + f([d[1] for d in digital_range], 8)
    head += f([""] * ns, 80) + f(per_record, 8) + f([""] * ns, 32)
    assert len(head) == 256 * (ns + 1)
    records = np.concatenate([np.asarray(d, "<i2").reshape(n_rec, -1) for d in digital], axis=1)
    path.write_bytes(head + records.tobytes())


# ------------------------------------------------------------------------------------ stim channel


def test_stim_events_begin_where_the_code_leaves_idle(tmp_path: Path) -> None:
    """A pulse whose code changes while high (1 -> 2 -> 3) is one pulse, and a pulse high at sample 0 counts."""
    n = 20_000
    rng = np.random.default_rng(0)
    stim = np.zeros(n)
    onsets = np.array([0, *range(150, n - 10, 200)])
    for k, a in enumerate(onsets):
        stim[a : a + 5] = [1, 1, 2, 3, 3] if k % 2 == 0 else [4, 4, 4, 4, 4]  # multi-code and one-code pulses
    emg = rng.normal(0, 50e-6, n)
    info = mne.create_info(["EMG1", "STI 014"], RATE, ["emg", "stim"])
    path = tmp_path / "stim_raw.fif"
    mne.io.RawArray(np.vstack([emg, stim]), info, verbose="error").save(path, verbose="error")

    rec = open_recording(path).info
    assert rec.pulse_source == "stim channel:STI 014"
    np.testing.assert_array_equal(rec.pulse_times_s, onsets / RATE)
    src, x, pulses = _replay(path)
    assert src.recording.channel_names == ("EMG1",)
    np.testing.assert_array_equal(pulses, onsets / RATE)
    np.testing.assert_allclose(x[:, 0], emg, rtol=2.0**-23, atol=0)


# ----------------------------------------------------------------------------------- EDF labels


def test_edf_channels_keep_their_header_labels(tmp_path: Path) -> None:
    """Labels "EMG,1", "EMG 2", "ECG 3": only "EMG 2" starts with the type word EMG, and it keeps its whole label
    (MNE's infer_types would call it "2"); any channel is picked by its header label."""
    n = 4000
    uv = np.random.default_rng(1).normal(0, 100, (3, n))
    labels = ["EMG,1", "EMG 2", "ECG 3"]
    raw = mne.io.RawArray(uv * 1e-6, mne.create_info(labels, RATE, "eeg"), verbose="error")
    path = tmp_path / "labels.edf"
    mne.export.export_raw(path, raw, verbose="error")
    head = path.read_bytes()
    assert [head[256 + 16 * i : 256 + 16 * (i + 1)].decode().strip() for i in range(3)] == labels
    tol = 0.01e-6  # the exporter's resolution here is ~1e-3 uV

    with open_recording(path) as reader:
        assert reader.info.channel_names == ("EMG 2",)
        assert reader.info.extra["channel_rule"] == "type emg"
        assert reader.info.extra["channel_types"] == ("emg",)
        np.testing.assert_allclose(reader.read(0, n)[:, 0], uv[1] * 1e-6, rtol=0, atol=tol)
    with open_recording(path, channels=["ECG 3", "EMG,1"]) as reader:
        assert reader.info.channel_names == ("ECG 3", "EMG,1")
        assert reader.info.extra["channel_types"] == ("ecg", "eeg")
        np.testing.assert_allclose(reader.read(0, n), uv[[2, 0]].T * 1e-6, rtol=0, atol=tol)
    src, x, _ = _replay(path, channels="EMG 2")
    assert src.info.channel_names == ("EMG 2",)
    np.testing.assert_allclose(x[:, 0], uv[1] * 1e-6, rtol=0, atol=tol)
    with pytest.raises(FileFormatError, match=r"no channel named '2' \(channels: EMG,1, EMG 2, ECG 3\)"):
        open_recording(path, channels=["2"])


def test_edf_without_type_words_replays_every_channel_in_volts(tmp_path: Path) -> None:
    uv = np.random.default_rng(2).normal(0, 100, (2, 3000))
    raw = mne.io.RawArray(uv * 1e-6, mne.create_info(["biceps", "triceps"], RATE, "emg"), verbose="error")
    path = tmp_path / "plain.edf"
    mne.export.export_raw(path, raw, verbose="error")  # labels without a type word
    with open_recording(path) as reader:
        assert reader.info.channel_names == ("biceps", "triceps")
        assert reader.info.extra["channel_rule"] == "unit V (no channel of type emg)"
        np.testing.assert_allclose(reader.read(0, 3000), uv.T * 1e-6, rtol=0, atol=0.01e-6)


# ------------------------------------------------------------------------------- FIF without EMG


def test_fif_without_emg_channels_is_refused_unless_channels_are_picked(tmp_path: Path) -> None:
    ecg = np.random.default_rng(3).normal(0, 1e-3, 2000)
    info = mne.create_info(["ECG1", "STI 014"], RATE, ["ecg", "stim"])
    path = tmp_path / "ecg_raw.fif"
    mne.io.RawArray(np.vstack([ecg, np.zeros(2000)]), info, verbose="error").save(path, verbose="error")
    with pytest.raises(FileFormatError) as err:
        open_recording(path)
    assert str(err.value) == (
        f"{path}: no EMG channels (channels: ECG1 (ecg), STI 014 (stim)): pick the channels to replay with --channels"
    )
    src, x, _ = _replay(path, channels=["ECG1"])
    assert src.info.channel_names == ("ECG1",) and src.recording.extra["channel_rule"] == "by name"
    np.testing.assert_allclose(x[:, 0], ecg, rtol=2.0**-23, atol=0)


# ---------------------------------------------------------------------------- EDF mixed rates


def _mixed_rate_edf(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3 s: "EMG a" at 2048 Hz, "ECG b" at 4096 Hz, a "Trigger" line at 2048 Hz high for 3 samples at 0.5, 1.25
    and 2 s. Returns the digital values of the EMG and the ECG, and the trigger onsets (s)."""
    rng = np.random.default_rng(4)
    emg = rng.integers(-3000, 3000, 3 * 2048).astype(np.int16)
    ecg = rng.integers(-3000, 3000, 3 * 4096).astype(np.int16)
    trig = np.zeros(3 * 2048, dtype=np.int16)
    onsets = np.array([1024, 2560, 4096])
    for a in onsets:
        trig[a : a + 3] = 1
    gain = [(-3276.8, 3276.7)] * 2 + [(-32768, 32767)]  # the trigger's physical values are its digital codes
    _write_edf(path, [emg, ecg, trig], ["EMG a", "ECG b", "Trigger"], [2048, 4096, 2048], physical=gain)
    return emg, ecg, onsets / 2048


def test_edf_channels_of_a_lower_rate_replay_at_their_own_rate(tmp_path: Path) -> None:
    """MNE would resample the 2048-Hz EMG to the file's 4096 Hz; it is read at 2048 Hz, sample for sample."""
    path = tmp_path / "mixed.edf"
    emg, ecg, onsets = _mixed_rate_edf(path)
    src, x, pulses = _replay(path)
    rec = src.recording
    assert (rec.rate_hz, rec.n_samples, rec.channel_names) == (2048.0, emg.size, ("EMG a",))
    np.testing.assert_allclose(x[:, 0], emg * 0.1e-6, rtol=1e-12, atol=1e-15)
    assert rec.pulse_source == "stim channel:Trigger"
    np.testing.assert_allclose(pulses, onsets, rtol=0, atol=1e-12)
    with open_recording(path, channels=["ECG b"]) as reader:  # the file's highest rate: as MNE reads it
        assert (reader.info.rate_hz, reader.info.n_samples) == (4096.0, ecg.size)
        np.testing.assert_allclose(reader.read(0, ecg.size)[:, 0], ecg * 0.1e-6, rtol=1e-12, atol=1e-15)


def test_edf_channels_picked_at_different_rates_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "mixed.edf"
    _mixed_rate_edf(path)
    with pytest.raises(FileFormatError) as err:
        open_recording(path, channels=["EMG a", "ECG b"])
    msg = str(err.value)
    assert msg.startswith(f"{path}: the channels picked have different sampling rates (EMG a 2048 Hz, ECG b 4096 Hz)")
    assert "--channels" in msg


# ----------------------------------------------------------------------------- EDF without gain


@pytest.mark.parametrize(
    ("field", "physical", "digital_range"),
    [
        ("digital", (-3276.8, 3276.7), (0, 0)),
        ("physical", (5.0, 5.0), (-32768, 32767)),
    ],
)
def test_edf_signal_without_a_gain_is_refused(tmp_path: Path, field: str, physical, digital_range) -> None:
    """MNE only warns "Scaling factor will not be defined" and reads nonsense (tens of volts)."""
    emg = np.arange(2048, dtype=np.int16) % 100
    good = ((-3276.8, 3276.7), (-32768, 32767))
    path = tmp_path / "gain.edf"
    _write_edf(
        path,
        [emg, emg],
        ["EMG ok", "EMG bad"],
        [2048, 2048],
        physical=[good[0], physical],
        digital_range=[good[1], digital_range],
    )
    with pytest.raises(FileFormatError) as err:
        open_recording(path)
    lo, hi = physical if field == "physical" else digital_range
    assert str(err.value) == (
        f"{path}: signal 'EMG bad' has no defined gain: header fields '{field} minimum' = {lo:g} and "
        f"'{field} maximum' = {hi:g} (they must be numbers that differ)"
    )
    with open_recording(path, channels=["EMG ok"]) as reader:  # only the picked signals need a gain
        np.testing.assert_allclose(reader.read(0, 2048)[:, 0], emg * 0.1e-6, rtol=1e-12, atol=1e-15)
