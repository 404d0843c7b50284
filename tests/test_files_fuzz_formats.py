"""WFDB and MATLAB files as labs write them, beyond the plain cases of test_files.py: records whose EMG runs at a
multiple of the frame rate, multi-segment records, headers that leave the length or the rate out, truncated data
files; .mat files whose units are per channel (picked with the channels, or a v7.3 cell array) or that state two
rates. Every expectation is what the test wrote."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from acquisition.files import FileFormatError, open_recording


def _wfdb() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # wfdb's use of deprecated pandas features
        import wfdb
    return wfdb


def _wrsamp(directory: Path, name: str, **kwargs: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        _wfdb().wrsamp(name, write_dir=str(directory), **kwargs)


def _error(path: Path, **kwargs: Any) -> str:
    with pytest.raises(FileFormatError) as err:
        open_recording(path, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ")
    return msg


# -------------------------------------------------------------------------------------------------- WFDB


def test_wfdb_signal_at_several_samples_per_frame_is_read_at_its_own_rate(tmp_path: Path) -> None:
    """EMG at 4 samples per frame beside an ECG at 1 (frame rate 1000 Hz): the EMG is a 4000-Hz signal, every
    sample of it (wfdb's default smooth_frames would average each frame's 4 into one, at 1000 Hz)."""
    rng = np.random.default_rng(1)
    emg_uv = rng.normal(0.0, 300.0, 4 * 2500)
    ecg_mv = rng.normal(0.0, 1.0, 2500)
    _wrsamp(
        tmp_path,
        "multi",
        fs=1000,
        units=["uV", "mV"],
        sig_name=["EMG", "ECG"],
        e_p_signal=[emg_uv, ecg_mv],
        samps_per_frame=[4, 1],
        fmt=["16", "16"],
    )
    path = tmp_path / "multi.hea"
    gain = _wfdb().rdheader(str(tmp_path / "multi")).adc_gain[0]  # digital steps per uV
    with open_recording(path, channels=["EMG"]) as reader:
        info = reader.info
        assert (info.rate_hz, info.n_samples, info.channel_names, info.original_units) == (
            4000.0,
            emg_uv.size,
            ("EMG",),
            ("uV",),
        )
        np.testing.assert_allclose(reader.read(0, emg_uv.size)[:, 0], emg_uv * 1e-6, rtol=0, atol=0.51e-6 / gain)
        whole = reader.read(0, emg_uv.size)
        np.testing.assert_array_equal(reader.read(5, 11), whole[5:11])  # within and across frames
        np.testing.assert_array_equal(reader.read(9998, 10000), whole[9998:])
    with open_recording(path, channels=["ECG"]) as reader:
        assert (reader.info.rate_hz, reader.info.n_samples) == (1000.0, 2500)
    # both: two rates, which one replay cannot carry
    msg = _error(path)
    assert "different sampling rates (EMG 4000 Hz, ECG 1000 Hz)" in msg and "--channels" in msg


def _segments(tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    first, second = rng.normal(0.0, 1.0, (1500, 2)), rng.normal(0.0, 1.0, (2500, 2))
    for name, part in (("seg_1", first), ("seg_2", second)):
        _wrsamp(tmp_path, name, fs=1000, units=["mV", "uV"], sig_name=["EMG1", "EMG2"], p_signal=part, fmt=["32"] * 2)
    (tmp_path / "seg.hea").write_text("seg/2 2 1000 4000\nseg_1 1500\nseg_2 2500\n")
    return first, second


def test_wfdb_multi_segment_record_is_read_across_its_segments(tmp_path: Path) -> None:
    first, second = _segments(tmp_path)
    expected = np.vstack((first, second)) * [1e-3, 1e-6]
    step = np.array([2e-12, 2e-15])  # format 32: 2**32 steps over about +-4 units (mV, uV), per segment
    with open_recording(tmp_path / "seg.hea") as reader:
        info = reader.info
        assert (info.rate_hz, info.n_samples, info.channel_names, info.original_units) == (
            1000.0,
            4000,
            ("EMG1", "EMG2"),
            ("mV", "uV"),
        )
        assert np.all(np.abs(reader.read(0, 4000) - expected) <= step)
        assert np.all(np.abs(reader.read(1490, 1510) - expected[1490:1510]) <= step)
    with open_recording(tmp_path / "seg.hea", channels=["EMG2"]) as reader:
        assert reader.info.original_units == ("uV",)
        assert np.all(np.abs(reader.read(0, 4000)[:, 0] - expected[:, 1]) <= step[1])


def _plain_record(tmp_path: Path, record_line: str) -> tuple[Path, np.ndarray]:
    """A two-signal format-16 record written by hand, gain 1000 adu/mV; the header's record line as given."""
    adc = np.random.default_rng(3).integers(-3000, 3000, (3000, 2)).astype("<i2")
    adc.tofile(tmp_path / "hand.dat")
    path = tmp_path / "hand.hea"
    signals = "".join(f"hand.dat 16 1000/mV 16 0 0 0 0 EMG{i}\n" for i in (1, 2))
    path.write_text(f"{record_line}\n{signals}")
    return path, adc / 1000.0 * 1e-3


def test_wfdb_header_without_the_length_is_read_to_the_end_of_its_data(tmp_path: Path) -> None:
    path, volts = _plain_record(tmp_path, "hand 2 1000")  # the length may be left out: the .dat holds it
    with open_recording(path) as reader:
        assert (reader.info.rate_hz, reader.info.n_samples) == (1000.0, 3000)
        np.testing.assert_array_equal(reader.read(0, 3000), volts)
        np.testing.assert_array_equal(reader.read(100, 200), volts[100:200])


def test_wfdb_header_without_a_rate_asks_for_one(tmp_path: Path) -> None:
    """A record line without a sampling frequency: wfdb assumes the WFDB default of 250 Hz, an ECG rate that an
    EMG record is unlikely to have; the rate is asked for, as for any file that does not state one."""
    path, volts = _plain_record(tmp_path, "hand 2")
    assert "no sampling rate in the header: give --rate" in _error(path)
    with open_recording(path, rate_hz=2000.0) as reader:
        assert (reader.info.rate_hz, reader.info.n_samples) == (2000.0, 3000)
        np.testing.assert_array_equal(reader.read(0, 3000), volts)


def test_wfdb_truncated_or_missing_data_file_is_refused_on_opening(tmp_path: Path) -> None:
    path, _ = _plain_record(tmp_path, "hand 2 1000 6000")  # the header promises twice what the .dat holds
    assert "truncated: the header states 6000 samples per signal, the data files hold 3000" in _error(path)
    (tmp_path / "hand.dat").unlink()
    assert "the data file hand.dat of this record is missing" in _error(path)


# ------------------------------------------------------------------------------------------------ MATLAB


def _wrann(
    directory: Path, name: str, ext: str, samples: np.ndarray, symbols: list[str], aux: list[str] | None
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        _wfdb().wrann(name, ext, samples, symbol=symbols, aux_note=aux, write_dir=str(directory))


def test_wfdb_stimulus_annotations_are_the_pulses(tmp_path: Path) -> None:
    """Pulse times from the record's annotation files: the annotations whose note (else symbol) or annotator
    name the pulse pattern finds; beat annotations of another annotator are not pulses."""
    fs, n = 2000, 8000
    rng = np.random.default_rng(5)
    _wrsamp(
        tmp_path,
        "rec",
        fs=fs,
        units=["mV", "mV"],
        sig_name=["EMG1", "EMG2"],
        p_signal=rng.normal(0, 0.05, (n, 2)),
        fmt=["16", "16"],
    )
    beats = np.arange(100, n, 900)
    _wrann(tmp_path, "rec", "atr", beats, ["N"] * beats.size, None)  # ECG-style beats: not pulses
    stim = np.arange(250, n, 400)
    notes = ["stim" if k % 2 else "pulse train" for k in range(stim.size)]
    _wrann(
        tmp_path,
        "rec",
        "evt",
        np.sort(np.concatenate([stim, [7990]])),
        ['"'] * (stim.size + 1),
        [*notes, "note: electrode check"][: stim.size + 1],
    )
    rec = open_recording(tmp_path / "rec.hea")
    assert rec.info.pulse_source == "annotations:evt"
    np.testing.assert_allclose(rec.info.pulse_times_s, stim / fs)  # not the note, not the beats
    assert {"N", "stim", "pulse train", "note: electrode check"} <= set(rec.info.extra["annotations"])
    rec.close()
    # a pattern picks other annotations (here the beats, by their symbol)
    rec = open_recording(tmp_path / "rec.hea", pulse_annotation=r"^N$")
    assert rec.info.pulse_source == "annotations:atr"
    np.testing.assert_allclose(rec.info.pulse_times_s, beats / fs)
    rec.close()
    # an annotator named for stimulation: all its annotations, whatever their symbols
    (tmp_path / "rec.evt").unlink()
    _wrann(tmp_path, "rec", "stim", stim, ["+"] * stim.size, None)
    rec = open_recording(tmp_path / "rec.hea")
    assert rec.info.pulse_source == "annotations:stim"
    np.testing.assert_allclose(rec.info.pulse_times_s, stim / fs)
    rec.close()


def test_wfdb_unreadable_annotation_file_is_noted_not_fatal(tmp_path: Path) -> None:
    fs, n = 1000, 3000
    x = np.random.default_rng(6).normal(0, 0.05, (n, 1))
    _wrsamp(tmp_path, "rec", fs=fs, units=["mV"], sig_name=["EMG"], p_signal=x, fmt=["16"])
    (tmp_path / "rec.atr").write_bytes(b"\xff" * 7)  # not an annotation file
    (tmp_path / "rec.csv").write_text("t,emg\n0,1\n")  # sidecar files are not annotators: tried and not said
    (tmp_path / "rec.txt").write_text("notes")
    rec = open_recording(tmp_path / "rec.hea")
    assert rec.info.pulse_source == "none"
    said = [w for w in rec.info.extra["warnings"] if "not read as WFDB annotations" in w]
    assert len(said) == 1 and said[0].startswith("rec.atr: "), said
    np.testing.assert_allclose(rec.read(0, n)[:, 0], x[:, 0] * 1e-3, atol=1e-3 * 0.05 * 2**-14 * 8)
    rec.close()


def test_mat_units_per_channel_follow_the_channels_picked(tmp_path: Path) -> None:
    from scipy.io import savemat

    x = np.random.default_rng(4).normal(0.0, 1.0, (2000, 3))
    path = tmp_path / "units.mat"
    savemat(path, {"emg": x, "fs": 1000, "units": np.array(["mV", "uV", "V"], dtype=object)})
    with open_recording(path, channels=["EMG3", "EMG1"]) as reader:
        assert reader.info.original_units == ("V", "mV")
        np.testing.assert_array_equal(reader.read(0, 2000), x[:, [2, 0]] * [1.0, 1e-3])


def test_mat_v73_cell_array_of_units(tmp_path: Path) -> None:
    """``units = {'mV', 'uV', 'V'}`` saved with -v7.3: a cell array, references to char datasets in #refs#."""
    import h5py

    x = np.random.default_rng(5).normal(0.0, 1.0, (2000, 3))
    path = tmp_path / "cells.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset("emg", data=x.T).attrs["MATLAB_class"] = np.bytes_("double")
        f.create_dataset("fs", data=np.array([[1000.0]])).attrs["MATLAB_class"] = np.bytes_("double")
        refs = []
        for i, unit in enumerate(("mV", "uV", "V")):
            ds = f.create_dataset(f"#refs#/{i}", data=np.array([[ord(c)] for c in unit], dtype=np.uint16))
            ds.attrs["MATLAB_class"] = np.bytes_("char")
            refs.append(ds.ref)
        cell = f.create_dataset("units", data=np.array([refs], dtype=h5py.ref_dtype).T)  # 1 x 3, transposed
        cell.attrs["MATLAB_class"] = np.bytes_("cell")
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Dec  7 12:00:00 2026 HDF5 schema 1.00 .")
    with open_recording(path) as reader:
        assert reader.info.original_units == ("mV", "uV", "V")
        np.testing.assert_array_equal(reader.read(0, 2000), x * [1e-3, 1e-6, 1.0])


def test_mat_with_two_rate_variables_that_disagree_is_refused(tmp_path: Path) -> None:
    """``fs`` the sampling rate and ``frequency`` (say) the stimulation frequency: which is the rate is a guess."""
    from scipy.io import savemat

    path = tmp_path / "two_rates.mat"
    savemat(path, {"emg": np.zeros((2000, 2)), "frequency": 30, "fs": 2000})
    msg = _error(path)
    assert "variables 'frequency' (30) and 'fs' (2000) give different sampling rates" in msg
    savemat(path, {"emg": np.zeros((2000, 2)), "Fs": 2000, "fs": 2000.0})  # the same rate twice is fine
    with open_recording(path) as reader:
        assert reader.info.rate_hz == 2000.0


# ------------------------------------------------------------------------------------------- OpenSignals


def test_opensignals_pulses_from_a_digital_trigger_line(tmp_path: Path) -> None:
    """A stimulator's trigger on a PLUX digital port (``digital/digital_N``, 0 at rest, 1 while high): its rises
    are the pulses; a digital line that stays at rest (as in the shared recording) gives none."""
    import h5py

    rate, n = 1000, 5000
    onsets = np.array([120, 480, 1003, 2500, 4998])
    line = np.zeros(n, np.uint16)
    for o in onsets:
        line[o : o + 3] = 1  # high for 3 ms, cut by the end of the recording for the last one
    adc = np.random.default_rng(3).integers(30000, 35000, n).astype(np.uint16)
    path = tmp_path / "plux.h5"
    with h5py.File(path, "w") as f:
        dev = f.create_group("00:07:80:3B:46:61")
        dev.attrs["sampling rate"] = np.int32(rate)
        dev.attrs["resolution"] = np.array([16], dtype=np.int32)
        dev.attrs["channels"] = np.array([1], dtype=np.int32)
        dev.attrs["nsamples"] = np.int32(n)
        raw = dev.create_group("raw")
        ds = raw.create_dataset("channel_1", data=adc[:, None])
        ds.attrs["sensor"] = "EMG"
        dig = dev.create_group("digital")
        dig.create_dataset("digital_1", data=np.zeros((n, 1), np.uint16))  # at rest throughout: no pulses
        dig.create_dataset("digital_2", data=line[:, None])
    rec = open_recording(path)
    assert rec.info.pulse_source == "digital channel:digital_2"
    np.testing.assert_allclose(rec.info.pulse_times_s, onsets / rate)
    np.testing.assert_allclose(rec.read(0, n)[:, 0], (adc / 2**16 - 0.5) * 3.0 / 1000.0)
    rec.close()
    with h5py.File(path, "a") as f:
        del f["00:07:80:3B:46:61/digital/digital_2"]
    rec = open_recording(path)
    assert rec.info.pulse_source == "none" and rec.info.pulse_times_s.size == 0
    rec.close()


def test_a_file_is_opened_with_its_own_reader_only(tmp_path: Path) -> None:
    """Opening an EDF loads MNE's EDF reader, not the BrainVision, EEGLAB and FIF readers (MNE loads a reader's
    module, and the epochs/evoked machinery the FIF one imports, when it is first named: ~0.1 s of a first file's
    replay); after :func:`import_reader` the opening imports no reader at all."""
    import json
    import subprocess
    import sys

    import mne

    path = tmp_path / "r.edf"
    x = np.random.default_rng(1).normal(0, 50e-6, (2, 2000))
    mne.export.export_raw(
        path, mne.io.RawArray(x, mne.create_info(["EMG1", "EMG2"], 1000.0, "emg"), verbose="error"), verbose="error"
    )
    code = (
        "import json, sys; from acquisition.files import import_reader, open_recording; "
        f"import_reader({str(path)!r}); loaded = set(sys.modules); open_recording({str(path)!r}).close(); "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('mne.io.')))); "
        "new = set(sys.modules) - loaded - {'mne.io.constants'}; "
        "print(json.dumps(sorted(m for m in new if m.startswith('mne.io.'))))"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root).stdout
    all_io, opened = (json.loads(line) for line in out.splitlines()[-2:])
    assert "mne.io.edf" in all_io
    assert not any(m.startswith(("mne.io.brainvision", "mne.io.eeglab", "mne.io.fiff")) for m in all_io), all_io
    assert opened == []
