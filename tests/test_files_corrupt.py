"""Truncated, corrupt and misnamed files of the MNE formats: one clear line naming the file and the problem,
never MNE's internal exception text, never a replay of part of a file as if it were whole. Every file is
written here (MNE's exporters, raw.save, scipy or raw bytes) and then cut, padded or renamed."""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path

import mne
import numpy as np
import pytest
import scipy.io

from acquisition.files import FileFormatError, FileSource, open_recording
from closedloop.errors import SourceError

RATE = 1000.0
N = 4000
NAMES = ["EMG1", "EMG2", "EMG3"]
PULSES_S = [0.5, 1.5, 3.5]


def _uv(seed: int = 0) -> np.ndarray:
    """``(3, N)`` microvolts."""
    return np.random.default_rng(seed).normal(0, 100, (3, N))


def _raw(uv: np.ndarray) -> mne.io.RawArray:
    raw = mne.io.RawArray(uv * 1e-6, mne.create_info(NAMES, RATE, "emg"), verbose="error")
    raw.set_annotations(mne.Annotations(PULSES_S, [0.0] * 3, ["stim"] * 3))
    return raw


def _error(path: Path, **kwargs) -> str:
    """The message of the FileFormatError opening ``path`` raises: one line, starting with the path."""
    with pytest.raises(FileFormatError) as err:
        open_recording(path, **kwargs)
    assert isinstance(err.value, SourceError)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg, msg
    return msg


def _replay(path: Path) -> np.ndarray:
    """All samples of a replay of ``path`` (as fast as possible), ``(n, C)`` volts."""

    async def run() -> np.ndarray:
        out = []
        async with FileSource(path, chunk_size=500, detect_pulses=False) as src:
            async for chunk in src:
                out.append(chunk.samples)
        return np.concatenate(out)

    return asyncio.run(run())


# ------------------------------------------------------------------------------------------ BrainVision


def test_brainvision_data_file_cut_is_refused(tmp_path: Path) -> None:
    """MNE replays the whole sample frames of a cut .eeg and drops the markers past its end with a warning."""
    uv = _uv(1)
    vhdr = tmp_path / "rec.vhdr"
    mne.export.export_raw(vhdr, _raw(uv), verbose="error")  # float32, 3 channels: 12-byte frames
    eeg = tmp_path / "rec.eeg"
    data = eeg.read_bytes()
    assert len(data) == N * 12

    eeg.write_bytes(data[: len(data) // 2 + 3])
    assert _error(vhdr) == (
        f"{vhdr}: truncated or corrupt: rec.eeg holds {N * 6 + 3} bytes, not a whole number of 12-byte sample "
        "frames (3 channels x 4 bytes)"
    )
    with pytest.raises(FileFormatError, match=r"rec\.vhdr: truncated or corrupt: rec\.eeg"):
        _replay(vhdr)

    eeg.write_bytes(data[: len(data) // 2])  # whole frames: only the markers past the end tell
    assert _error(vhdr) == f"{vhdr}: truncated: markers run to sample 3501, the data file holds {N // 2} samples"

    eeg.write_bytes(data)
    with open_recording(vhdr) as reader:
        assert (reader.info.n_samples, reader.info.pulse_source) == (N, "annotations")
        np.testing.assert_allclose(reader.info.pulse_times_s, PULSES_S, atol=1e-9)
    x = _replay(vhdr)
    np.testing.assert_allclose(x, uv.T * 1e-6, rtol=2.0**-23, atol=0)


# ----------------------------------------------------------------------------------------------- EEGLAB


def _set_with_fdt(path: Path, uv: np.ndarray) -> Path:
    """An EEGLAB dataset whose samples are in a separate .fdt (float32 uV, channels of a sample together), made
    from MNE's export (which embeds them in the .set). Returns the .fdt."""
    mne.export.export_raw(path, _raw(uv), verbose="error")
    fields = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
    samples = np.asarray(fields["data"], dtype="<f4")
    assert samples.shape == (3, N)
    fdt = path.with_suffix(".fdt")
    fields["data"] = fdt.name
    scipy.io.savemat(path, fields)
    samples.T.tofile(fdt)
    return fdt


def test_eeglab_fdt_cut_or_padded_is_refused(tmp_path: Path) -> None:
    """MNE opened the cut .fdt and failed on reading: "Incorrect number of samples (6000 != 12000), please report
    this error to MNE-Python developers"; it read a padded one's first bytes."""
    uv = _uv(2)
    path = tmp_path / "rec.set"
    fdt = _set_with_fdt(path, uv)
    data = fdt.read_bytes()
    assert len(data) == 4 * 3 * N

    fdt.write_bytes(data[: len(data) // 2])
    msg = _error(path)
    assert msg == (
        f"{path}: truncated: rec.fdt holds {len(data) // 2} bytes, the dataset's 3 channels x {N} samples "
        f"need {len(data)} (float32)"
    )
    assert "MNE" not in msg
    fdt.write_bytes(data + b"\0\0\0")
    assert _error(path).startswith(f"{path}: corrupt (not this dataset's data file?): rec.fdt holds {len(data) + 3}")
    fdt.unlink()
    assert "the dataset's data file (.fdt) is missing" in _error(path)

    fdt.write_bytes(data)
    x = _replay(path)
    np.testing.assert_allclose(x, uv.T * 1e-6, rtol=2.0**-23, atol=0)


def test_eeglab_set_cut_is_not_a_readable_dataset(tmp_path: Path) -> None:
    """A cut MAT file: MNE said "'Bunch' object has no attribute 'chanlocs'" or "could not read bytes"."""
    path = tmp_path / "rec.set"
    mne.export.export_raw(path, _raw(_uv(3)), verbose="error")  # the samples in the .set itself
    whole = path.read_bytes()
    for cut in (len(whole) // 2, 200, 0):
        path.write_bytes(whole[:cut])
        assert _error(path).startswith(f"{path}: not a readable EEGLAB dataset ("), cut
    path.write_bytes(whole)
    with open_recording(path) as reader:
        assert reader.info.n_samples == N and reader.info.channel_names == tuple(NAMES)


# -------------------------------------------------------------------------------------------------- FIF


@pytest.mark.parametrize("name", ["empty_raw.fif", "empty_raw.fif.gz"])
def test_empty_fif_is_refused(tmp_path: Path, name: str) -> None:
    """MNE said "'NoneType' object has no attribute 'kind'"."""
    path = tmp_path / name
    path.write_bytes(b"")
    assert _error(path) == f"{path}: empty or not a FIF file (it holds no data)"
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(b""))
        assert _error(path) == f"{path}: empty or not a FIF file (it holds no data)"
    path.write_bytes(b"EDF+ and not FIF")
    msg = _error(path)
    assert "not a FIF file" in msg or "not a gzip-compressed FIF file" in msg


def test_fif_cut_in_its_header_is_truncated_or_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "rec_raw.fif"
    _raw(_uv(4)).save(path, verbose="error")
    whole = path.read_bytes()
    path.write_bytes(whole[:10])  # the file-id tag begun, not finished
    msg = _error(path)
    assert msg.startswith(f"{path}: truncated or corrupt FIF file (")
    assert "NoneType" not in msg.split("(")[0]


def test_fif_cut_in_its_data_replays_up_to_the_cut_and_fails_there(tmp_path: Path) -> None:
    """A FIF file opens with the data buffers MNE finds: cut between buffers it held fewer samples and replayed
    as complete; cut inside a buffer it failed with "buffer size must be a multiple of element size"."""
    uv = _uv(5)
    path = tmp_path / "rec_raw.fif"
    _raw(uv).save(path, buffer_size_sec=1.0, verbose="error")  # 4 buffers of 1000 samples
    whole = path.read_bytes()
    reader = open_recording(path)
    ends = [int(e.pos) + 16 + int(e.size) for e in reader._raw._raw_extras[0]["ent"]]
    reader.close()
    assert len(ends) == 4

    path.write_bytes(whole[: ends[1]])  # two whole buffers, nothing after them
    with open_recording(path) as reader:
        assert reader.info.n_samples == 2000
        assert any("truncated" in w for w in reader.info.extra["warnings"])
        np.testing.assert_allclose(reader.read(0, 1999), uv[:, :1999].T * 1e-6, rtol=2.0**-23, atol=0)
        with pytest.raises(FileFormatError, match=r"truncated: the file ends inside its data, after sample 2000"):
            reader.read(1500, 2000)

    path.write_bytes(whole[: ends[2] - 100])  # the third buffer cut short
    with open_recording(path) as reader:
        np.testing.assert_allclose(reader.read(0, 2000), uv[:, :2000].T * 1e-6, rtol=2.0**-23, atol=0)
        with pytest.raises(FileFormatError) as err:
            reader.read(1500, 2500)
        assert str(err.value) == (
            f"{path}: truncated: the file has {ends[2] - 100} bytes, its data for samples 2000..3000 run to "
            f"byte {ends[2]}"
        )
    with pytest.raises(FileFormatError, match=r"rec_raw\.fif: truncated: the file has"):
        _replay(path)

    path.write_bytes(whole)
    with open_recording(path) as reader:
        assert "warnings" not in reader.info.extra
    np.testing.assert_allclose(_replay(path), uv.T * 1e-6, rtol=2.0**-23, atol=0)


# ----------------------------------------------------------------------------------- EDF, BDF, GDF names


def test_edf_bdf_gdf_content_under_another_extension_is_refused(tmp_path: Path) -> None:
    """MNE said "invalid byte in annotations channel ... encoding='latin1'" for BDF named .edf, and the header
    check "truncated: the header promises ..." for EDF named .bdf."""
    raw = _raw(_uv(6))
    edf, bdf = tmp_path / "rec.edf", tmp_path / "rec.bdf"
    mne.export.export_raw(edf, raw, verbose="error")
    mne.export.export_raw(bdf, raw, verbose="error")
    assert edf.read_bytes()[:8] == b"0       " and bdf.read_bytes()[:8] == b"\xffBIOSEMI"

    bdf_as_edf = tmp_path / "bdf_content.edf"
    bdf_as_edf.write_bytes(bdf.read_bytes())
    assert _error(bdf_as_edf) == f"{bdf_as_edf}: a BDF file named .edf (rename it .bdf)"
    edf_as_bdf = tmp_path / "edf_content.bdf"
    edf_as_bdf.write_bytes(edf.read_bytes())
    assert _error(edf_as_bdf) == f"{edf_as_bdf}: an EDF file named .bdf (rename it .edf)"
    edf_as_gdf = tmp_path / "edf_content.gdf"
    edf_as_gdf.write_bytes(edf.read_bytes())
    assert _error(edf_as_gdf) == f"{edf_as_gdf}: an EDF file named .gdf (rename it .edf)"
    gdf_as_edf = tmp_path / "gdf_content.EDF"
    gdf_as_edf.write_bytes(b"GDF 2.20" + bytes(1000))
    assert _error(gdf_as_edf) == f"{gdf_as_edf}: a GDF file named .EDF (rename it .gdf)"

    for good in (edf, bdf):
        with open_recording(good) as reader:
            assert reader.info.n_samples == N and reader.info.pulse_source == "annotations"


# -------------------------------------------------------------------------- EDF+ annotations, mixed rates


def _edf_plus(path: Path, per_record: list[int], annotation: bytes, header_counts: list[int] | None = None) -> None:
    """3 one-second records of an EDF+ file: "EMG a" and "ECG b" (int16 samples, 0.1 uV per step) at
    ``per_record`` samples per record, an "EDF Annotations" signal of 30 samples whose second record holds
    ``annotation`` (a TAL's text). ``header_counts`` overrides the header's 'samples per record' (all 3 signals).
    """
    rng = np.random.default_rng(7)
    sig = [rng.integers(-3000, 3000, 3 * n).astype("<i2") for n in per_record]
    labels = ["EMG a", "ECG b", "EDF Annotations"]
    counts = header_counts or [*per_record, 30]

    def f(values: list, width: int) -> bytes:
        return b"".join(str(v).encode("ascii").ljust(width) for v in values)

    head = b"0       " + f(["X X X X"], 80) + f(["Startdate 01-JAN-2024 X X X"], 80) + f(["01.01.24", "12.00.00"], 8)
    head += f([256 * 4], 8) + f(["EDF+C"], 44) + f([3, 1], 8) + f([3], 4)
    head += f(labels, 16) + f([""] * 3, 80) + f(["uV", "uV", ""], 8)
    head += f([-3276.8, -3276.8, -1], 8) + f([3276.7, 3276.7, 1], 8) + f([-32768] * 3, 8) + f([32767] * 3, 8)
    head += f([""] * 3, 80) + f(counts, 8) + f([""] * 3, 32)
    records = []
    for r in range(3):
        tal = f"+{r}\x14\x14\x00".encode() + (annotation if r == 1 else b"")
        parts = [s[r * n : (r + 1) * n].tobytes() for s, n in zip(sig, per_record, strict=True)]
        records.append(b"".join(parts) + tal.ljust(60, b"\0"))
    path.write_bytes(head + b"".join(records))


def test_edf_plus_of_mixed_rates_with_latin1_annotations_opens(tmp_path: Path) -> None:
    """MNE refuses annotation text that is not UTF-8 ("... encoding='latin1'"), at the first opening and at the
    reopening that reads a lower-rate channel at its own rate."""
    path = tmp_path / "latin1.edf"
    _edf_plus(path, [2048, 4096], "+1.5\x14Reiz \xb5 stim\x14\x00".encode("latin-1"))
    with open_recording(path) as reader:
        info = reader.info
        assert (info.rate_hz, info.n_samples, info.channel_names) == (2048.0, 3 * 2048, ("EMG a",))
        assert info.extra["annotations"] == ["Reiz \u00b5 stim"]
        np.testing.assert_allclose(info.pulse_times_s, [1.5], atol=1e-9)
        assert "annotation texts are not UTF-8: read as latin-1" in info.extra["warnings"]
    utf8 = tmp_path / "utf8.edf"
    _edf_plus(utf8, [2048, 4096], "+1.5\x14Reiz \u00b5 stim\x14\x00".encode())
    with open_recording(utf8, channels=["ECG b"]) as reader:
        assert (reader.info.rate_hz, reader.info.n_samples) == (4096.0, 3 * 4096)
        assert "warnings" not in reader.info.extra


def test_edf_plus_whose_header_does_not_match_its_records_is_corrupt(tmp_path: Path) -> None:
    """Records of 2048 + 4096 + 30 samples under a header saying 2048 + 2048 + 30: MNE read the annotation signal at
    the wrong place and said "invalid byte in annotations channel ... encoding='latin1'"."""
    path = tmp_path / "mismatch.edf"
    _edf_plus(path, [2048, 4096], b"+1.5\x14stim\x14\x00", header_counts=[2048, 2048, 30])
    record = 2 * (2048 + 2048 + 30)
    data = 3 * 2 * (2048 + 4096 + 30)
    assert _error(path) == (
        f"{path}: corrupt: the EDF annotation signal cannot be read ({data} bytes of data records are not a whole "
        f"number of {record}-byte records; samples per record: EMG a 2048, ECG b 2048, EDF Annotations 30)"
    )
