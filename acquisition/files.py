"""Recorded EMG as a Source: file readers for the formats labs use, and the paced :class:`FileSource`.

:func:`open_recording` opens one recording and returns a :class:`RecordingReader`: what the file holds
(:class:`RecordingInfo`: rate, channels, units, pulses, timestamps) and ``read(start, stop)``, which
returns ``(stop - start, n_channels)`` float64 samples in **volts** whatever the file stores.
:class:`FileSource` replays a recording as a :class:`~acquisition.base.Source`, as fast as possible or
paced at a multiple of real time, with the stimulation pulses attached to the chunks they fall in.

Formats
-------
======================  ==================================  ===========================================
extension               read with                           EMG channels, units, pulses
======================  ==================================  ===========================================
.edf .bdf .gdf          MNE (lazy: ``preload=False``)       channels of type ``emg`` (EDF/BDF labels
.fif .fif.gz            MNE (lazy)                          such as ``"EMG biceps"`` are typed by their
.vhdr (BrainVision)     MNE (lazy)                          first word), else (not FIF) every channel
.set (EEGLAB)           MNE (lazy)                          in volts; pulses from annotations matching
                                                            ``pulse_annotation``, else from the onsets
                                                            of a stim/trigger channel
.xdf .xdfz              pyxdf (whole file in memory)        one stream (``stream``, default type or
                                                            name ``EMG``); units per channel from the
                                                            header; the exact recorded timestamps;
                                                            pulses from closedloop's ``Pulses`` stream
                                                            or a string ``Markers`` stream
.hea (WFDB)             wfdb (lazy: ``rdrecord(sampfrom,    channels in a voltage unit (``mV`` ...);
                        sampto)``; optional dependency)     see "WFDB records" below
.mat (MATLAB v4-v7)     scipy.io.loadmat (whole file)       Ninapro-style ``emg`` or the single signal
.mat (MATLAB v7.3)      h5py (whole file)                   array; see "MATLAB files" below
.h5 .hdf5 (OpenSignals) h5py (lazy)                         ``raw/channel_N`` of an EMG sensor (PLUX,
                                                            BITalino): its transfer function; pulses from
                                                            the onsets of a ``digital/digital_N`` line
======================  ==================================  ===========================================

WFDB records
    Single- and multi-segment records (a multi-segment record's channels and units are those of its first
    segment: the layout segment of a variable layout). A signal stored at several samples per frame is read
    at its own rate (frame rate x samples per frame), every sample; channels of different rates together
    are refused. A header without the record's length is read to the end of its data files (read whole, on
    the first read); a header whose record line gives no sampling frequency (wfdb would assume WFDB's
    250 Hz) needs ``rate_hz``. A data file that is missing, or holds fewer samples than the header states,
    is refused on opening. Pulses come from the record's annotation files (``<record>.<annotator>``, e.g.
    ``.atr``): the annotations whose aux note (else symbol) ``pulse_annotation`` finds, or all of an annotator
    whose name it finds (``rec.stim``); the first annotator with any. A file that wfdb cannot read as
    annotations is noted in the warnings.

MATLAB files
    The signal is the variable ``emg`` (Ninapro: ``(n, C)``; a ``(C, n)`` array with ``C < n`` is
    transposed) or else the one numeric 1-D or 2-D variable with at least 100 samples (e.g. ``raw_on``
    of the tSCS recordings); anything else is ambiguous and refused. The rate comes from a variable
    named ``frequency``, ``fs``, ``Fs``, ``FS``, ``sampling_rate`` or ``srate`` (several that disagree are
    refused), else from ``rate_hz``. Units come from a string variable ``units`` (one unit, or one per
    column of the signal; a char array or a cell array of strings) or the ``units`` argument; when neither
    says, the values are taken as **microvolts** (``original_units`` ``"assumed uV"``): lab exports of
    EMG are mostly in uV or V, and reading volts as uV only makes the signal look tiny, whereas reading
    uV (or ADC counts) as V makes every estimator window saturate. Ninapro files are in volts: pass
    ``units="V"``. Pulse times (s) come from a variable ``pulses`` or ``stim_times`` if present.

OpenSignals (PLUX) files
    The device group (``stream`` picks one by name if there are several) holds ``raw/channel_N``
    datasets; those whose attribute ``sensor`` is an EMG sensor are read: ``EMG`` (biosignalsplux) or
    ``EMGBITREV`` (BITalino (r)evolution). Rate from the group's attribute ``sampling rate``, ADC resolution
    (bits) from ``resolution``. The sensor's transfer function gives volts: ``(adc / 2**resolution - 0.5) *
    VCC / G``, with VCC = 3 V and G = 1000 for PLUX's EMG sensor, VCC = 3.3 V and G = 1009 for BITalino's.

MNE formats
    Annotation texts are searched with ``pulse_annotation`` (default ``(?i)stim|pulse|trigger``); GDF
    events become annotations named by their numeric event type (e.g. ``"768"``), so give a pattern such
    as ``r"^768$"`` for them. Without matching annotations, the onsets of the first stim channel that has
    any are the pulses (BDF ``Status``: its low 16 bits, the trigger lines): an event begins where the code
    leaves the idle level (the commonest code), the sample before the first counting as idle, and lasts
    until the code returns to idle, whatever codes it takes meanwhile. MNE only knows uV and mV in
    EDF/BDF/GDF headers; other voltage units stated there (e.g. nV, or mV in GDF 1) are corrected here, and
    EDF/GDF signals whose header states a non-voltage unit are not taken as EMG.

    EDF/BDF channels are named by their whole header label (``"EMG 2"``, which MNE's ``infer_types``
    would rename ``"2"``); an EDF+ type word before a space (``EMG``, ``ECG``, ``EOG``, ``EEG``, ``MISC``,
    ...) gives the channel's type. Signals stored at a lower rate than the file's highest are read at their
    own rate when all the channels read share it (MNE would resample them); channels of different rates
    together, and a signal whose header gives no gain (digital or physical minimum = maximum), are refused.
    FIF files state every channel's type: one without a channel of type ``emg`` is refused unless
    ``channels`` names the channels to read; other MNE formats do not store types, so every channel in
    volts is read then.

Units and rates the file does not state
    ``units`` (one for all channels or one per channel) is used only where the file states none, or a
    non-voltage one (XDF channels, .mat files); ``rate_hz`` only where the file has no sampling rate
    (.mat files, irregular XDF streams, WFDB headers without one). XDF channels without a unit are taken as
    microvolts (``"assumed uV"``), as :class:`acquisition.lsl.LSLSource` does for live streams without one.

Errors
    Every problem with a file (missing, unknown type, truncated, corrupt, no EMG, a missing channel, no
    rate) raises :class:`FileFormatError` with a one-line message ``"<path>: <problem>"``; library
    exceptions are translated with ``raise ... from exc``. Beyond what the libraries check: EDF, BDF or
    GDF content under another of these three extensions is refused (rename it); a BrainVision data file
    that is not a whole number of sample frames, or that ends before the last marker of the .vmrk, and an
    EEGLAB .fdt whose size is not channels x samples x 4 bytes, are refused as truncated or corrupt; a FIF
    file cut short (MNE opens what it holds) replays up to the cut and then fails, saying so. EDF+/BDF+
    annotation texts that are not UTF-8 are read as latin-1 (noted in ``extra["warnings"]``).
"""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import dataclasses
import glob
import gzip
import importlib
import logging
import math
import re
import struct
import time
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from closedloop.errors import ConfigError, SourceError
from closedloop.estimation.artifacts import ArtifactDetector, is_pulse_train, pulses_missed_in_train
from closedloop.types import Chunk, StreamInfo, unit_to_volts

__all__ = [
    "READABLE_EXTENSIONS",
    "FileChunk",
    "FileFormatError",
    "FileSource",
    "RecordingInfo",
    "RecordingReader",
    "format_extension",
    "import_reader",
    "open_recording",
]

DEFAULT_PULSE_ANNOTATION = r"(?i)stim|pulse|trigger"

#: Extensions :func:`open_recording` reads, and the format each stands for.
READABLE_EXTENSIONS: dict[str, str] = {
    ".edf": "EDF",
    ".bdf": "BDF",
    ".gdf": "GDF",
    ".fif": "FIF",
    ".fif.gz": "FIF",
    ".vhdr": "BrainVision",
    ".set": "EEGLAB",
    ".xdf": "XDF",
    ".xdfz": "XDF",
    ".hea": "WFDB",
    ".mat": "MAT",
    ".h5": "OpenSignals",
    ".hdf5": "OpenSignals",
}

#: The library (module, and the reader in it: MNE loads its readers lazily) for each format (:func:`import_reader`).
_READER_MODULES = {
    "EDF": ("mne.io", "read_raw_edf"),
    "BDF": ("mne.io", "read_raw_bdf"),
    "GDF": ("mne.io", "read_raw_gdf"),
    "FIF": ("mne.io", "read_raw_fif"),
    "BrainVision": ("mne.io", "read_raw_brainvision"),
    "EEGLAB": ("mne.io", "read_raw_eeglab"),
    "XDF": ("pyxdf", "load_xdf"),
    "WFDB": ("wfdb", "rdheader"),
    "MAT": ("scipy.io", "loadmat"),
    "OpenSignals": ("h5py", "File"),
}


def format_extension(path: Path) -> str:
    """The extension that names ``path``'s format (lower case; ``.fif.gz`` whole)."""
    return ".fif.gz" if path.name.lower().endswith(".fif.gz") else path.suffix.lower()


def import_reader(path: str | PathLike[str]) -> None:
    """Import the library that reads ``path``'s format, once per process (MNE's import and its lazily loaded
    reader take ~0.1-0.5 s): a replay timing its file leaves that out. Unknown formats and missing libraries:
    nothing (opening the file says why)."""
    fmt = READABLE_EXTENSIONS.get(format_extension(Path(path)))
    if fmt is not None:
        module, reader = _READER_MODULES[fmt]
        with contextlib.suppress(ImportError, AttributeError), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # wfdb's own use of pandas, on import
            getattr(importlib.import_module(module), reader)


# Companion files people open by mistake, and the file to open instead.
_COMPANIONS = {
    ".eeg": ".vhdr (the BrainVision header)",
    ".vmrk": ".vhdr (the BrainVision header)",
    ".fdt": ".set (the EEGLAB dataset)",
    ".dat": ".hea (the WFDB header)",
}

_MAT_RATE_NAMES = ("frequency", "fs", "Fs", "FS", "sampling_rate", "srate")
_MAT_PULSE_NAMES = ("pulses", "stim_times")
_MAT_MIN_SAMPLES = 100

# OpenSignals EMG sensors (the dataset attribute ``sensor``): supply voltage (V), gain and name, from the sensors'
# data sheets; volts = (adc / 2**bits - 0.5) * VCC / GAIN.
_OPENSIGNALS_EMG = {
    "EMG": (3.0, 1000.0, "PLUX EMG sensor"),  # biosignalsplux
    "EMGBITREV": (3.3, 1009.0, "BITalino (r)evolution EMG sensor"),
}

# MNE channel types whose channels count as EMG candidates when no channel is typed 'emg'.
_VOLTAGE_TYPES = frozenset({"eeg", "emg", "ecg", "eog", "seeg", "ecog", "dbs", "misc"})

# Exceptions libraries raise on unreadable files; translated into FileFormatError at the boundary.
_LIBRARY_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    RuntimeError,
    KeyError,
    IndexError,
    TypeError,
    AssertionError,
    EOFError,
    SyntaxError,  # xml.etree.ElementTree.ParseError
    struct.error,
    zlib.error,
    configparser.Error,  # BrainVision headers
    MemoryError,  # a corrupt header asking for absurd sizes
)

# Read-ahead of FileSource: at least this much signal per file read (s).
_READ_BLOCK_S = 0.5
# Unpaced replays read about this many bytes of float64 samples at a time, whole chunks per read: MNE's
# cost per get_data call dominates small reads (64 ch x 2048 Hz, 60 s: 4096-sample reads 2x slower than 16384)
_FAST_READ_BYTES = 8 << 20
#: Channel-samples per chunk of a replay as fast as possible when its chunk size is automatic (FileSource).
FAST_CHUNK_ELEMENTS = 1 << 18


class FileFormatError(SourceError):
    """A recording that cannot be used: missing, unknown type, truncated or corrupt, no EMG, no rate."""


def _fail(path: str | PathLike[str], problem: str) -> FileFormatError:
    """A :class:`FileFormatError` with the one-line message ``"<path>: <problem>"``."""
    return FileFormatError(f"{path}: {_one_line(problem)}")


def _one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line of printable characters, at most ``limit`` long."""
    text = "".join(ch if ch.isprintable() else "?" for ch in " ".join(str(text).split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _library_problem(what: str, exc: BaseException) -> str:
    detail = _one_line(str(exc), 200) or "no detail"
    return f"{what} ({type(exc).__name__}: {detail})"


# ---------------------------------------------------------------------------------------------- info


@dataclass(frozen=True, eq=False)
class RecordingInfo:
    """What a recording holds.

    Attributes
    ----------
    path:
        The file opened.
    format:
        ``"EDF"``, ``"BDF"``, ``"GDF"``, ``"FIF"``, ``"BrainVision"``, ``"EEGLAB"``, ``"XDF"``, ``"WFDB"``,
        ``"MAT"`` or ``"OpenSignals"``.
    rate_hz:
        Sampling rate (Hz).
    n_samples:
        Samples per channel.
    channel_names:
        The EMG channels read, in the order of the sample columns.
    original_units:
        Per channel, the unit the file states (``"uV"``, ``"mV"``, ``"V"``, ...), or ``"assumed V"`` /
        ``"assumed uV"`` when the file states none, or a description of a conversion (OpenSignals). The
        samples :meth:`RecordingReader.read` returns are in volts regardless.
    pulse_times_s:
        ``(n_pulses,)`` float64, stimulation pulse times in seconds from the first sample, increasing;
        empty if the file records none (pulses outside the recording are dropped, see ``extra``).
    pulse_amplitudes_ma:
        ``(n_pulses,)`` amplitudes in mA when the file records them (closedloop's ``Pulses`` stream),
        else None.
    pulse_source:
        Where the pulses come from: ``"annotations"``, ``"stim channel:<name>"``, ``"markers:<stream>"``,
        ``"Pulses stream"``, ``"variable:<name>"`` (.mat), ``"detected"`` (set by :class:`FileSource`
        when it detects them from the artifacts) or ``"none"``.
    timestamps:
        ``(n_samples,)`` float64, the per-sample timestamps recorded in the file (XDF), else None.
    meas_date:
        Start of the recording when the file states it, else None.
    extra:
        Format-specific details: which channel rule applied, the XDF file header, OpenSignals attributes,
        warnings the reading library gave, ...
    """

    path: Path
    format: str
    rate_hz: float
    n_samples: int
    channel_names: tuple[str, ...]
    original_units: tuple[str, ...]
    pulse_times_s: np.ndarray
    pulse_amplitudes_ma: np.ndarray | None
    pulse_source: str
    timestamps: np.ndarray | None = None
    meas_date: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_channels(self) -> int:
        """Number of channels read."""
        return len(self.channel_names)

    @property
    def duration_s(self) -> float:
        """Length of the recording (s): ``n_samples / rate_hz``."""
        return self.n_samples / self.rate_hz


@dataclass(frozen=True)
class _Options:
    channels: tuple[str, ...] | None
    stream: str | None
    rate_hz: float | None
    units: tuple[str, ...] | None
    pulse_annotation: re.Pattern[str]

    def pulse_marks(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts),)`` bool: which annotation or marker texts ``pulse_annotation`` finds (pulses)."""
        return np.array([self.pulse_annotation.search(t) is not None for t in texts], dtype=bool)


# -------------------------------------------------------------------------------------------- reader


class RecordingReader:
    """An open recording: :attr:`info`, and :meth:`read` for any range of samples.

    Created by :func:`open_recording`; usable as a context manager (closes the file on exit).

    Attributes
    ----------
    info:
        What the recording holds.
    pulse_times_clock:
        ``(n_pulses,)`` the pulses of ``info.pulse_times_s`` on the clock of the replay's timestamps:
        the recorded timestamps for XDF (exactly as recorded), seconds from the first sample otherwise.
    in_memory:
        True when the whole recording was loaded on opening (XDF, .mat): reads are then mere slicing.
    """

    in_memory: bool = False

    def __init__(self, info: RecordingInfo, pulse_times_clock: np.ndarray) -> None:
        self.info = info
        self.pulse_times_clock = pulse_times_clock
        self._closed = False

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples ``start`` to ``stop`` (exclusive) as ``(stop - start, n_channels)`` float64 volts.

        Raises
        ------
        ValueError
            A range outside ``0 <= start <= stop <= n_samples``.
        FileFormatError
            The file cannot be read there (truncated, corrupt) or delivers fewer samples than it claims.
        """
        n = self.info.n_samples
        start, stop = int(start), int(stop)
        if not 0 <= start <= stop <= n:
            raise ValueError(f"read({start}, {stop}): the range must lie within 0..{n}")
        if self._closed:
            raise SourceError(f"{self.info.path}: the recording is closed")
        c = self.info.n_channels
        if stop == start:
            return np.empty((0, c))
        try:
            x = self._read(start, stop)
        except (FileFormatError, SourceError):
            raise
        except Exception as exc:  # OSError, ValueError, struct.error, ... from a truncated or corrupt file
            raise _fail(self.info.path, _library_problem(f"cannot read samples {start}..{stop}", exc)) from exc
        x = np.asarray(x, dtype=np.float64)
        if x.shape != (stop - start, c):
            raise _fail(
                self.info.path,
                f"file ended early: asked for samples {start}..{stop} ({stop - start} x {c}), "
                f"got an array of shape {x.shape} (truncated file?)",
            )
        return x

    def _read(self, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Release the file; idempotent."""
        self._closed = True

    def __enter__(self) -> RecordingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        i = self.info
        return (
            f"{type(self).__name__}({str(i.path)!r}, {i.format}, {i.rate_hz:g} Hz, {i.n_channels} ch, "
            f"{i.n_samples} samples)"
        )


class _ArrayReader(RecordingReader):
    """A recording held in memory as ``(n, C)`` volts."""

    in_memory = True

    def __init__(self, info: RecordingInfo, pulse_times_clock: np.ndarray, volts: np.ndarray) -> None:
        super().__init__(info, pulse_times_clock)
        self._x = volts

    def _read(self, start: int, stop: int) -> np.ndarray:
        return self._x[start:stop]

    def close(self) -> None:
        super().close()
        self._x = np.empty((0, self.info.n_channels))


class _MNEReader(RecordingReader):
    """Lazy reads through ``raw.get_data(picks, start, stop)``; ``scale`` corrects MNE's unit handling."""

    def __init__(
        self,
        info: RecordingInfo,
        pulse_times_clock: np.ndarray,
        raw: Any,
        picks: list[int],
        scale: np.ndarray,
        cut: tuple[int, str] | None = None,
    ) -> None:
        super().__init__(info, pulse_times_clock)
        self._cut = cut  # a truncated file: (first sample not readable, the problem)
        self._raw = raw
        self._picks = picks
        self._scale = scale
        self._unit_scale = bool(np.all(scale == 1.0))  # MNE's volts as they are (FIF, most EDF): no pass to scale

    def _read(self, start: int, stop: int) -> np.ndarray:
        # FileSource calls this from a worker thread; catch_warnings is process-wide, which is harmless
        # here (nothing else changes the warning filters during a replay)
        if self._cut is not None and stop > self._cut[0]:
            raise _fail(self.info.path, self._cut[1])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            data = self._raw.get_data(picks=self._picks, start=start, stop=stop, verbose="warning")
        _note_warnings(self.info.extra, caught)
        if self._unit_scale:
            return data.T  # get_data's own fresh array
        return (data * self._scale[:, None]).T  # scaled along MNE's contiguous rows: the same values, faster

    def close(self) -> None:
        super().close()
        raw, self._raw = self._raw, None
        if raw is not None:
            with contextlib.suppress(Exception):
                raw.close()


class _WFDBReader(RecordingReader):
    """Lazy reads through ``wfdb.rdrecord(sampfrom, sampto, physical=True)``.

    ``spf``: samples per frame of the channels read (all alike). Above 1 the channels run at ``spf`` times the
    frame rate: the frames holding the samples asked for are read unsmoothed (``smooth_frames=False``).
    ``whole``: the header does not state the record's length, which wfdb then reads only whole: the first read
    reads the whole record, later ones slice it.
    """

    def __init__(
        self,
        info: RecordingInfo,
        pulse_times_clock: np.ndarray,
        wfdb: Any,
        record_name: str,
        channels: list[int],
        scale: np.ndarray,
        spf: int = 1,
        whole: bool = False,
    ) -> None:
        super().__init__(info, pulse_times_clock)
        self._wfdb = wfdb
        self._record = record_name
        self._channels = channels
        self._scale = scale
        self._spf = spf
        self._whole = whole
        self._cache: np.ndarray | None = None

    def _read(self, start: int, stop: int) -> np.ndarray:
        if self._whole:
            if self._cache is None:
                self._cache = self._frames(None, None)
            return self._cache[start:stop]
        k = self._spf
        f0 = start // k
        return self._frames(f0, -(-stop // k))[start - f0 * k : stop - f0 * k]  # the frames holding start..stop

    def _frames(self, f0: int | None, f1: int | None) -> np.ndarray:
        """Frames ``f0`` to ``f1`` (None: the whole record) as ``(samples, channels)`` volts."""
        k = self._spf
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rec = self._wfdb.rdrecord(
                self._record, sampfrom=f0 or 0, sampto=f1, channels=self._channels, physical=True, smooth_frames=k == 1
            )
        _note_warnings(self.info.extra, caught)
        x = rec.p_signal if k == 1 else None if rec.e_p_signal is None else np.column_stack(rec.e_p_signal)
        if x is None:
            raise _fail(self.info.path, "the record holds no physical signal")
        return x * self._scale

    def close(self) -> None:
        super().close()
        self._cache = None


class _OpenSignalsReader(RecordingReader):
    """Lazy reads of ``raw/channel_N`` datasets, converted with each EMG sensor's transfer function (``volts``:
    ``(n_channels,)`` VCC / gain of each)."""

    def __init__(
        self,
        info: RecordingInfo,
        pulse_times_clock: np.ndarray,
        h5file: Any,
        datasets: list[Any],
        resolution_bits: np.ndarray,
        volts: np.ndarray,
    ) -> None:
        super().__init__(info, pulse_times_clock)
        self._file = h5file
        self._datasets = datasets
        self._full_scale = 2.0 ** resolution_bits.astype(np.float64)
        self._volts = np.asarray(volts, dtype=np.float64)

    def _read(self, start: int, stop: int) -> np.ndarray:
        adc = np.column_stack([np.asarray(ds[start:stop], dtype=np.float64).reshape(-1) for ds in self._datasets])
        return (adc / self._full_scale - 0.5) * self._volts

    def close(self) -> None:
        super().close()
        f, self._file = self._file, None
        if f is not None:
            with contextlib.suppress(Exception):
                f.close()


# ------------------------------------------------------------------------------------------ opening


def open_recording(
    path: str | PathLike[str],
    *,
    channels: Sequence[str] | str | None = None,
    stream: str | None = None,
    rate_hz: float | None = None,
    units: Sequence[str] | str | None = None,
    pulse_annotation: str | re.Pattern[str] = DEFAULT_PULSE_ANNOTATION,
) -> RecordingReader:
    """Open a recording of EMG for reading in volts.

    MNE formats, WFDB and OpenSignals are read lazily (only the samples asked for); XDF and MATLAB files
    are loaded whole on opening (their libraries cannot read part of a file).

    Parameters
    ----------
    path:
        The recording: .edf .bdf .gdf .fif(.gz) .vhdr .set .xdf(z) .hea .mat .h5 (see the module docstring).
    channels:
        Names of the channels to read, in this order; None: the EMG channels the format rule finds.
    stream:
        XDF: name or type of the EMG stream (default: the stream of type ``EMG``, else one named ``EMG``).
        OpenSignals: name of the device group when the file holds several.
    rate_hz:
        Sampling rate (Hz) for files that do not state one (.mat); ignored when the file has one.
    units:
        Unit of the values (one for all channels or one per channel) where the file states none.
    pulse_annotation:
        Regular expression (searched) for annotation or marker texts that mark stimulation pulses.

    Returns
    -------
    RecordingReader
        Close it (or use it as a context manager) when done.

    Raises
    ------
    FileFormatError
        The file cannot be used; the one-line message names the file and the problem.
    ConfigError
        Invalid arguments (a bad regular expression, an unknown unit, a non-positive rate).
    """
    p = Path(path)
    opts = _options(channels, stream, rate_hz, units, pulse_annotation)
    ext = format_extension(p)
    fmt = READABLE_EXTENSIONS.get(ext)
    if fmt is None:
        if ext in _COMPANIONS:
            raise _fail(path, f"'{ext}' holds only part of a recording: open the {_COMPANIONS[ext]} instead")
        shown = f"'{ext}'" if ext else "(no extension)"
        raise _fail(path, f"unknown file type {shown}; readable: {' '.join(READABLE_EXTENSIONS)}")
    if not p.exists():
        raise _fail(path, "no such file")
    if p.is_dir():
        raise _fail(path, "is a directory, not a recording")
    opener = _OPENERS[fmt]
    try:
        return opener(p, fmt, opts)
    except (FileFormatError, ConfigError):
        raise
    except _LIBRARY_ERRORS as exc:
        raise _fail(path, _library_problem(f"cannot read this {fmt} file", exc)) from exc
    except Exception as exc:  # a corrupt file can make a parser fail in any way: never a bare traceback
        raise _fail(path, _library_problem(f"cannot read this {fmt} file", exc)) from exc


def _options(
    channels: Sequence[str] | str | None,
    stream: str | None,
    rate_hz: float | None,
    units: Sequence[str] | str | None,
    pulse_annotation: str | re.Pattern[str],
) -> _Options:
    chans: tuple[str, ...] | None = None
    if channels is not None:
        chans = (channels,) if isinstance(channels, str) else tuple(str(c) for c in channels)
        if not chans:
            raise ConfigError("channels: give at least one channel name (or None for the EMG channels)")
        if not all(c.strip() for c in chans):
            raise ConfigError(f"channels: an empty channel name in {list(chans)}")
        dup = sorted({c for c in chans if chans.count(c) > 1})
        if dup:
            raise ConfigError(f"channels: {', '.join(dup)} given more than once")
    rate: float | None = None
    if rate_hz is not None:
        try:
            rate = float(rate_hz)
        except (TypeError, ValueError):
            raise ConfigError(f"rate_hz = {rate_hz!r}: must be a number of Hz") from None
        if not (math.isfinite(rate) and rate > 0):
            raise ConfigError(f"rate_hz = {rate_hz!r}: must be a finite number > 0")
    unit_t: tuple[str, ...] | None = None
    if units is not None:
        unit_t = (units,) if isinstance(units, str) else tuple(units)
        if not unit_t:
            raise ConfigError("units: give one unit, or one per channel")
        for u in unit_t:
            unit_to_volts(u)  # ConfigError naming the allowed units
    if isinstance(pulse_annotation, re.Pattern):
        pattern = pulse_annotation
    else:
        try:
            pattern = re.compile(pulse_annotation)
        except (re.error, TypeError) as exc:
            raise ConfigError(f"pulse_annotation {pulse_annotation!r} is not a regular expression: {exc}") from None
    return _Options(chans, stream, rate, unit_t, pattern)


def _note_warnings(extra: dict[str, Any], caught: list[warnings.WarningMessage]) -> None:
    """Keep what the reading library warned about (not deprecations: those concern the library) in extra."""
    notes = [
        _one_line(str(w.message), 200)
        for w in caught
        if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning))
    ]
    if notes:
        extra.setdefault("warnings", []).extend(notes)


def _units_for(opts: _Options, n: int, path: Path) -> tuple[str, ...] | None:
    """The ``units`` argument expanded to ``n`` channels (None if not given)."""
    if opts.units is None:
        return None
    if len(opts.units) == 1:
        return opts.units * n
    if len(opts.units) != n:
        raise ConfigError(f"{path}: {len(opts.units)} units given for {n} channels; give one, or one per channel")
    return opts.units


def _is_voltage(unit: str) -> bool:
    try:
        unit_to_volts(unit)
    except ConfigError:
        return False
    return True


def _pick_by_name(path: Path, available: Sequence[str], wanted: Sequence[str]) -> list[int]:
    index = {name: i for i, name in enumerate(available)}
    missing = [w for w in wanted if w not in index]
    if missing:
        word = "channel" if len(missing) == 1 else "channels"
        listing = ", ".join(available) if available else "none"
        names = ", ".join(repr(m) for m in missing)
        raise _fail(path, f"no {word} named {names} (channels: {listing})")
    return [index[w] for w in wanted]


def _sample_index(times: np.ndarray, rate_hz: float, n_samples: int, timestamps: np.ndarray | None) -> np.ndarray:
    """Index of the sample each time (s, on the recording's clock: from 0 without ``timestamps``) belongs to:
    the first whose timestamp is >= t - 0.5 / rate."""
    half = 0.5 / rate_hz
    if timestamps is not None:
        return np.searchsorted(timestamps, times - half)
    # the same as searchsorted(arange(n) / rate, times - half), without the n-sample array
    target = times - half
    k = np.clip(np.ceil(target * rate_hz), 0, n_samples).astype(np.int64)
    k -= (k > 0) & ((k - 1) / rate_hz >= target)
    k += (k < n_samples) & (k / rate_hz < target)
    return k


def _finish(
    path: Path,
    fmt: str,
    rate_hz: float,
    n_samples: int,
    names: Sequence[str],
    original_units: Sequence[str],
    pulse_clock: np.ndarray,
    amplitudes: np.ndarray | None,
    pulse_source: str,
    *,
    timestamps: np.ndarray | None = None,
    meas_date: datetime | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[RecordingInfo, np.ndarray]:
    """Check the basics, keep the pulses inside the recording and build the :class:`RecordingInfo`."""
    extra = {} if extra is None else extra
    if not (math.isfinite(rate_hz) and rate_hz > 0):
        raise _fail(path, f"invalid sampling rate {rate_hz!r} Hz in the file")
    if n_samples <= 0:
        raise _fail(path, "the recording holds no samples")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if list(names).count(n) > 1})
        raise _fail(path, f"channel names are not unique ({', '.join(dup)}); pick channels by name")
    t0 = 0.0 if timestamps is None else float(timestamps[0])
    t_end = (n_samples - 1) / rate_hz if timestamps is None else float(timestamps[-1]) - t0
    pulse_clock = np.asarray(pulse_clock, dtype=np.float64).reshape(-1)
    order = np.argsort(pulse_clock, kind="stable")
    pulse_clock = pulse_clock[order]
    if amplitudes is not None:
        amplitudes = np.asarray(amplitudes, dtype=np.float64).reshape(-1)[order]
    rel = pulse_clock - t0
    half = 0.5 / rate_hz
    inside = np.isfinite(rel) & (rel >= -half) & (rel < t_end + half)
    n_out = int(np.count_nonzero(~inside))
    if n_out:
        extra["pulses_outside_recording"] = n_out
        rel, pulse_clock = rel[inside], pulse_clock[inside]
        if amplitudes is not None:
            amplitudes = amplitudes[inside]
    if rel.size > 1:  # pulses on one sample are one pulse (an annotation written twice, a doubled marker)
        at = _sample_index(pulse_clock, rate_hz, n_samples, timestamps)
        again = np.concatenate(([False], at[1:] == at[:-1]))
        if again.any():
            n_again = int(np.count_nonzero(again))
            extra.setdefault("warnings", []).append(
                f"{n_again} pulse time(s) on the sample of the pulse before them counted once"
            )
            rel, pulse_clock = rel[~again], pulse_clock[~again]
            if amplitudes is not None:
                amplitudes = amplitudes[~again]
    if n_out:
        extra.setdefault("warnings", []).append(
            f"{n_out} pulse time(s) outside the recording ignored" + (" (all of them)" if rel.size == 0 else "")
        )
    if rel.size == 0:
        pulse_source, amplitudes = "none", None
    info = RecordingInfo(
        path=path,
        format=fmt,
        rate_hz=float(rate_hz),
        n_samples=int(n_samples),
        channel_names=tuple(str(n) for n in names),
        original_units=tuple(original_units),
        pulse_times_s=rel,
        pulse_amplitudes_ma=amplitudes,
        pulse_source=pulse_source,
        timestamps=timestamps,
        meas_date=meas_date,
        extra=extra,
    )
    return info, pulse_clock


# ---------------------------------------------------------------------------------------- MNE family


@dataclass(frozen=True)
class _EdfHeader:
    """Per-signal fields of an EDF/BDF header, in header order (the annotation signal included)."""

    labels: tuple[str, ...]
    samples_per_record: np.ndarray  # (ns,) int
    record_s: float  # duration of a data record (s)
    physical_min: np.ndarray  # (ns,) float, NaN where unreadable
    physical_max: np.ndarray
    digital_min: np.ndarray
    digital_max: np.ndarray
    header_bytes: int = 0
    n_records: int = 0  # as the header states it (-1: unknown)
    record_bytes: int = 0  # bytes of one data record, from the 'samples per record' fields
    file_bytes: int = 0

    def rate_hz(self, signal: int) -> float:
        """Native sampling rate (Hz) of header signal ``signal``."""
        return float(self.samples_per_record[signal]) / self.record_s


def _header_number(raw: bytes) -> float:
    """A numeric header field as MNE reads it (NUL-terminated, decimal comma allowed); NaN if unreadable."""
    try:
        return float(raw.decode("latin-1").split("\x00")[0].strip().replace(",", "."))
    except ValueError:
        return math.nan


def _edf_header_check(path: Path, fmt: str) -> _EdfHeader:
    """Refuse EDF/BDF files whose fixed header is unusable or whose data records are cut short; return the
    per-signal header fields.

    MNE would silently read a truncated file up to where it ends (with a warning); a replay should not.
    """
    size = path.stat().st_size
    article = "an" if fmt == "EDF" else "a"
    with open(path, "rb") as f:
        head = f.read(256)
        actual = _edf_family_format(head)
        if actual is not None and actual != fmt:
            raise _misnamed(path, actual)
        if len(head) < 256:
            raise _fail(path, f"not {article} {fmt} file (header is {len(head)} bytes, need 256)")

        def number(lo: int, hi: int, what: str) -> int:
            raw = head[lo:hi]
            try:
                return int(float(raw.decode("ascii").strip()))
            except (UnicodeDecodeError, ValueError):
                raise _fail(path, f"not {article} {fmt} file (header field '{what}' is {raw!r})") from None

        header_bytes = number(184, 192, "number of bytes in header")
        n_records = number(236, 244, "number of data records")
        n_signals = number(252, 256, "number of signals")
        if n_signals < 1 or header_bytes != 256 * (n_signals + 1):
            raise _fail(
                path,
                f"not {article} {fmt} file (header size field says {header_bytes} bytes for {n_signals} signals, "
                f"expected {256 * (max(n_signals, 0) + 1)})",
            )
        if size < header_bytes:
            raise _fail(path, f"truncated: the header needs {header_bytes} bytes, the file has {size}")
        sig = f.read(256 * n_signals)
    ns = n_signals

    def column(offset: int, width: int) -> list[bytes]:  # one field of every signal: ns fields side by side
        base = offset * ns
        return [sig[base + width * i : base + width * (i + 1)] for i in range(ns)]

    try:
        counts = np.array([int(c.decode("ascii").strip()) for c in column(216, 8)], dtype=np.int64)
    except (UnicodeDecodeError, ValueError):
        raise _fail(path, f"not {article} {fmt} file (unreadable 'samples per record' fields)") from None
    record_bytes = int(counts.sum()) * (3 if fmt == "BDF" else 2)
    if n_records > 0 and record_bytes > 0:
        expected = header_bytes + n_records * record_bytes
        if size < expected:
            raise _fail(
                path,
                f"truncated: the header promises {n_records} data records ({expected} bytes), "
                f"the file has {size} bytes",
            )
    record_s = _header_number(head[244:252])
    if not (math.isfinite(record_s) and record_s > 0):
        record_s = 1.0  # as MNE reads such a file (it warns)
    return _EdfHeader(
        labels=tuple(b.strip().decode("latin-1") for b in column(0, 16)),
        samples_per_record=counts,
        record_s=record_s,
        physical_min=np.array([_header_number(b) for b in column(104, 8)]),
        physical_max=np.array([_header_number(b) for b in column(112, 8)]),
        digital_min=np.array([_header_number(b) for b in column(120, 8)]),
        digital_max=np.array([_header_number(b) for b in column(128, 8)]),
        header_bytes=header_bytes,
        n_records=n_records,
        record_bytes=record_bytes,
        file_bytes=size,
    )


# What the first bytes of an EDF-family file say it is: EDF's version field is "0" and 7 spaces, BioSemi's BDF
# starts with 0xFF and "BIOSEMI", GDF with "GDF".
_FAMILY_MAGIC = ((b"0       ", "EDF"), (b"\xffBIOSEMI", "BDF"), (b"GDF", "GDF"))
_FAMILY_EXT = {"EDF": ".edf", "BDF": ".bdf", "GDF": ".gdf"}


def _edf_family_format(head: bytes) -> str | None:
    """``"EDF"``, ``"BDF"`` or ``"GDF"`` as the file's first bytes say, None if they say none of them."""
    for magic, fmt in _FAMILY_MAGIC:
        if head.startswith(magic):
            return fmt
    return None


def _misnamed(path: Path, actual: str) -> FileFormatError:
    """The file holds ``actual`` (EDF, BDF, GDF) content under another of the three extensions."""
    article = "an" if actual == "EDF" else "a"
    shown = path.suffix or "(no extension)"
    return _fail(path, f"{article} {actual} file named {shown} (rename it {_FAMILY_EXT[actual]})")


# EDF+ signal-type words (a label's first word, before a space: "EMG biceps") and the MNE type of each, as
# MNE's own infer_types reads them; closedloop keeps the whole label as the channel name.
_EDF_TYPE_WORDS = {
    "EEG": "eeg",
    "SEEG": "seeg",
    "ECOG": "ecog",
    "DBS": "dbs",
    "EOG": "eog",
    "ECG": "ecg",
    "EMG": "emg",
    "BIO": "bio",
    "RESP": "resp",
    "TEMP": "temperature",
    "MISC": "misc",
    "SAO2": "bio",
    "STIM": "stim",
}
_EDF_ANNOTATION_LABELS = ("EDF Annotations", "BDF Annotations")


def _edf_types(hdr: _EdfHeader, mne_types: list[str]) -> tuple[list[str], list[int]]:
    """Channel types from the labels' type words (MNE's own type where it set one: a stim channel) and the
    header signal of each MNE channel (MNE leaves out the annotation signals)."""
    signals = [i for i, label in enumerate(hdr.labels) if label not in _EDF_ANNOTATION_LABELS]
    if len(signals) != len(mne_types):
        raise RuntimeError(f"the header lists {len(signals)} signals, MNE read {len(mne_types)} channels")
    types = []
    for t, i in zip(mne_types, signals, strict=True):
        word, space, _ = hdr.labels[i].partition(" ")
        typed = _EDF_TYPE_WORDS.get(word.upper()) if space else None
        types.append(typed if t == "eeg" and typed is not None else t)
    return types, signals


def _edf_gain_check(path: Path, hdr: _EdfHeader, signals: Sequence[int]) -> None:
    """Refuse picked signals whose header defines no gain (MNE only warns and reads garbage)."""
    for i in signals:
        for what, lo, hi in (
            ("digital", hdr.digital_min[i], hdr.digital_max[i]),
            ("physical", hdr.physical_min[i], hdr.physical_max[i]),
        ):
            if not (math.isfinite(lo) and math.isfinite(hi) and lo != hi):
                raise _fail(
                    path,
                    f"signal {hdr.labels[i]!r} has no defined gain: header fields '{what} minimum' = {lo:g} and "
                    f"'{what} maximum' = {hi:g} (they must be numbers that differ)",
                )


# GDF 2 physical-dimension codes of voltages (biosig units.csv: 4256 = V, low bits = decimal prefix).
_GDF_VOLT_CODES = {4256: "V", 4274: "mV", 4275: "uV", 4276: "nV"}


def _gdf_units(path: Path) -> list[str] | None:
    """Channel units stated in a GDF header (GDF 1: text; GDF 2: codes), None if unreadable."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
            version = float(head[4:8].decode("ascii"))
            if version < 1.9:
                ns = struct.unpack_from("<I", head, 252)[0]
                f.seek(256 + ns * (16 + 80))
                raw = f.read(8 * ns)
                return [raw[8 * i : 8 * i + 8].decode("latin-1").strip("\x00 ") for i in range(ns)]
            ns = struct.unpack_from("<H", head, 252)[0]
            f.seek(256 + ns * (16 + 80 + 6))
            codes = struct.unpack(f"<{ns}H", f.read(2 * ns))
            return [_GDF_VOLT_CODES.get(c, f"GDF unit code {c}") for c in codes]
    except (OSError, ValueError, struct.error):
        return None


def _mne_factor(fmt: str, unit: str, gdf_version2: bool) -> float | None:
    """The factor MNE applied for ``unit`` in EDF/BDF/GDF files (None: not an integer-format file)."""
    if fmt in ("EDF", "BDF"):
        if unit in ("\u03bcV", "\u00b5V", "\x83\xcaV", "uV"):
            return 1e-6
        return 1e-3 if unit == "mV" else 1.0
    if fmt == "GDF":
        if gdf_version2:
            return {"uV": 1e-6, "mV": 1e-3}.get(unit, 1.0)
        return 1e-6 if unit[:2] == "uV" else 1.0
    return None


def _read_raw_mne(path: Path, fmt: str, extra: dict[str, Any], **kwargs: Any) -> Any:
    """The file opened lazily with MNE's reader for ``fmt``; its warnings are kept in ``extra``."""
    import mne

    # only this format's reader: MNE loads each reader's module (and what it imports) when it is first named
    reader = getattr(mne.io, _READER_MODULES[fmt][1])
    # EDF/BDF labels are kept whole ("EMG 2", not MNE's "2"); _edf_types reads their type words
    defaults = {"infer_types": False} if fmt in ("EDF", "BDF") else {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        raw = reader(str(path), preload=False, verbose="warning", **defaults, **kwargs)
    _note_warnings(extra, caught)
    return raw


def _open_mne(path: Path, fmt: str, opts: _Options) -> RecordingReader:
    hdr = None
    if fmt in ("EDF", "BDF"):
        hdr = _edf_header_check(path, fmt)
    elif fmt == "GDF":
        with open(path, "rb") as f:
            magic = f.read(8)
        actual = _edf_family_format(magic)
        if actual in ("EDF", "BDF"):
            raise _misnamed(path, actual)
        if magic[:3] != b"GDF":
            raise _fail(path, f"not a GDF file (it starts with {magic[:8]!r}, not 'GDF')")
    elif fmt == "FIF":
        _fif_start_check(path)
    extra: dict[str, Any] = {}
    raw = _open_raw_mne(path, fmt, extra, hdr)
    try:
        return _mne_reader(path, fmt, opts, raw, extra, hdr)
    except BaseException:
        with contextlib.suppress(Exception):
            raw.close()
        raise


def _mne_reader(
    path: Path, fmt: str, opts: _Options, raw: Any, extra: dict[str, Any], hdr: _EdfHeader | None = None
) -> RecordingReader:
    from mne.io.constants import FIFF

    if fmt == "GDF":
        _gdf_size_check(path, raw)
    elif fmt == "BrainVision":
        _brainvision_size_check(path, raw)
    elif fmt == "EEGLAB":
        _eeglab_size_check(path, raw)
    names = list(raw.ch_names)
    types = raw.get_channel_types()
    signals: list[int] = []  # EDF/BDF: the header signal of each channel
    if hdr is not None:
        types, signals = _edf_types(hdr, types)
    orig = dict(getattr(raw, "_orig_units", None) or {})
    gdf_units = _gdf_units(path) if fmt == "GDF" else None
    if gdf_units is not None and len(gdf_units) == len(names):
        orig = dict(zip(names, gdf_units, strict=True))

    def stated_voltage(i: int) -> bool:  # MNE types every EDF/GDF signal as V, whatever its header says
        unit = str(orig.get(names[i], "")).strip().replace("\u00b5", "u").replace("\u03bc", "u")
        return not unit or _is_voltage(unit)

    if opts.channels is not None:
        picks = _pick_by_name(path, names, opts.channels)
        extra["channel_rule"] = "by name"
    else:
        picks = [i for i, t in enumerate(types) if t == "emg"]
        extra["channel_rule"] = "type emg"
        if not picks and fmt != "FIF":  # FIF files store each channel's type (ECG, EEG are not EMG); others do not
            picks = [
                i
                for i, (t, ch) in enumerate(zip(types, raw.info["chs"], strict=True))
                if t in _VOLTAGE_TYPES and ch["unit"] == FIFF.FIFF_UNIT_V and stated_voltage(i)
            ]
            extra["channel_rule"] = "unit V (no channel of type emg)"
        if not picks:
            listing = ", ".join(f"{n} ({t})" for n, t in zip(names, types, strict=True)) or "none"
            if fmt == "FIF":
                raise _fail(path, f"no EMG channels (channels: {listing}): pick the channels to replay with --channels")
            raise _fail(path, f"no EMG channels (no channel of type emg or in volts; channels: {listing})")
    if hdr is not None:
        _edf_gain_check(path, hdr, [signals[i] for i in picks])
    gdf_v2 = False
    if gdf_units is not None:
        with contextlib.suppress(ValueError, OSError), open(path, "rb") as f:
            gdf_v2 = float(f.read(8)[4:8].decode("ascii")) >= 1.9
    units: list[str] = []
    scale = np.ones(len(picks))
    for j, i in enumerate(picks):
        stated = orig.get(names[i])
        if stated is None and fmt == "EEGLAB":
            stated = "uV"  # EEGLAB stores microvolts by convention; MNE scales by 1e-6
        if stated is None:
            units.append("V")
            continue
        stated = str(stated).strip()
        if not stated:
            units.append("assumed V")
            continue
        units.append(stated.replace("\u00b5", "u").replace("\u03bc", "u"))
        mne_factor = _mne_factor(fmt, stated, gdf_v2)
        if mne_factor is not None and _is_voltage(units[-1]):
            # MNE knows only uV and mV in EDF/BDF/GDF headers: correct the rest (e.g. nV)
            scale[j] = unit_to_volts(units[-1]) / mne_factor
    pulse_s, source = _mne_pulses(path, fmt, opts, raw, names, types, picks, extra)
    meas_date = raw.info.get("meas_date")
    extra["channel_types"] = tuple(types[i] for i in picks)
    data, data_picks = raw, picks
    if hdr is not None:
        data, data_picks = _edf_native_rate(path, fmt, hdr, raw, picks, signals, extra)
    try:
        info, clock = _finish(
            path,
            fmt,
            float(data.info["sfreq"]),
            int(data.n_times),
            [names[i] for i in picks],
            units,
            pulse_s,
            None,
            source,
            meas_date=meas_date if isinstance(meas_date, datetime) else None,
            extra=extra,
        )
    except BaseException:
        if data is not raw:
            data.close()
        raise
    if data is not raw:
        raw.close()  # pulses came from it (times in s); the samples come from ``data``
    cut = _fif_truncation(path, raw, extra) if fmt == "FIF" else None
    if cut is not None:
        extra.setdefault("warnings", []).append(f"{cut[1]}: reading sample {cut[0]} or later fails")
    return _MNEReader(info, clock, data, data_picks, scale, cut)


def _edf_native_rate(
    path: Path, fmt: str, hdr: _EdfHeader, raw: Any, picks: list[int], signals: list[int], extra: dict[str, Any]
) -> tuple[Any, list[int]]:
    """The raw to read the picked EDF/BDF channels from, and their picks in it.

    MNE resamples every channel it reads to the highest rate among them: ``raw`` itself when the picked
    channels' native rate (samples per record / record duration, Hz) is the rate it reports, else the file
    reopened with only the picked channels, read at their own rate. Picked channels of different rates are
    refused.
    """
    sfreq = float(raw.info["sfreq"])
    names = [raw.ch_names[i] for i in picks]
    rates = [hdr.rate_hz(signals[i]) for i in picks]
    if all(math.isclose(r, sfreq, rel_tol=1e-12) for r in rates):
        return raw, picks
    listing = ", ".join(f"{n} {r:g} Hz" for n, r in zip(names, rates, strict=True))
    if any(not math.isclose(r, rates[0], rel_tol=1e-12) for r in rates):
        raise _fail(
            path,
            f"the channels picked have different sampling rates ({listing}) and would all be resampled to "
            f"{max(rates):g} Hz: pick channels of one rate with --channels",
        )
    data = _open_raw_mne(path, fmt, {}, hdr, include=names)  # its warnings are those of the first opening
    try:
        data_picks = [data.ch_names.index(n) for n in names]
        ok = math.isclose(float(data.info["sfreq"]), rates[0], rel_tol=1e-12)
    except ValueError:  # a label the file holds twice: MNE renamed it
        ok = False
    if not ok:
        data.close()
        raise _fail(
            path,
            f"cannot read the channels picked ({listing}) at their own rate apart from the file's other channels "
            f"({sfreq:g} Hz): pick channels of {sfreq:g} Hz with --channels",
        )
    extra["native_rate"] = f"picked channels read at their own {rates[0]:g} Hz (other channels: up to {sfreq:g} Hz)"
    return data, data_picks


def _gdf_size_check(path: Path, raw: Any) -> None:
    try:
        ex = raw._raw_extras[0]
        expected = int(ex["data_offset"]) + int(ex["n_records"]) * int(ex["bytes_tot"])
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return
    size = path.stat().st_size
    if size < expected:
        raise _fail(path, f"truncated: the header promises {expected} bytes of header and data, the file has {size}")


def _open_raw_mne(path: Path, fmt: str, extra: dict[str, Any], hdr: _EdfHeader | None, **kwargs: Any) -> Any:
    """:func:`_read_raw_mne`, with what MNE raises on a bad file of ``fmt`` said in terms of the file."""
    try:
        return _read_raw_mne(path, fmt, extra, **kwargs)
    except (FileFormatError, ConfigError):
        raise
    except Exception as exc:
        if hdr is not None and "annotations channel" in str(exc):
            return _edf_annotation_retry(path, fmt, extra, hdr, exc, **kwargs)
        if fmt == "FIF":
            raise _fail(path, _library_problem("truncated or corrupt FIF file", exc)) from exc
        if fmt == "EEGLAB":
            if isinstance(exc, FileNotFoundError):
                raise _fail(path, _library_problem("the dataset's data file (.fdt) is missing", exc)) from exc
            raise _fail(path, _library_problem("not a readable EEGLAB dataset", exc)) from exc
        raise


def _edf_annotation_retry(
    path: Path, fmt: str, extra: dict[str, Any], hdr: _EdfHeader, exc: Exception, **kwargs: Any
) -> Any:
    """MNE could not decode the EDF+/BDF+ annotation signal as UTF-8.

    When the data records fill the file as the header's 'samples per record' say, the annotations are text in
    another encoding (some writers use latin-1): read them as latin-1. Otherwise the records do not match the
    header (a corrupt header, or the wrong format): refuse, saying so, instead of MNE's hint at the encoding.
    """
    data_bytes = hdr.file_bytes - hdr.header_bytes
    whole = hdr.record_bytes > 0 and data_bytes % hdr.record_bytes == 0
    if whole and hdr.n_records in (-1, data_bytes // hdr.record_bytes):
        try:
            raw = _read_raw_mne(path, fmt, extra, encoding="latin1", **kwargs)
        except Exception:  # the first error says more
            pass
        else:
            extra.setdefault("warnings", []).append("annotation texts are not UTF-8: read as latin-1")
            return raw
    counts = ", ".join(
        f"{label or '?'} {n}" for label, n in zip(hdr.labels[:6], hdr.samples_per_record[:6].tolist(), strict=True)
    )
    more = ", ..." if len(hdr.labels) > 6 else ""
    if not whole:
        layout = f"{data_bytes} bytes of data records are not a whole number of {hdr.record_bytes}-byte records"
    elif hdr.n_records not in (-1, data_bytes // hdr.record_bytes):
        found = data_bytes // hdr.record_bytes
        layout = f"{found} records of {hdr.record_bytes} bytes, the header says {hdr.n_records}"
    else:
        layout = "its text is neither UTF-8 nor latin-1"
    raise _fail(
        path,
        f"corrupt: the {fmt} annotation signal cannot be read ({layout}; samples per record: {counts}{more})",
    ) from exc


# Every FIF file begins with the tag FIFF_FILE_ID (kind 100, big-endian int32).
_FIF_FILE_ID = b"\x00\x00\x00\x64"


def _fif_start_check(path: Path) -> None:
    """Refuse an empty file or one that does not begin with a FIF file-id tag (MNE fails obscurely on them)."""
    try:
        opener: Callable[..., Any] = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as f:
            start = f.read(4)
    except (OSError, EOFError, zlib.error) as exc:
        raise _fail(path, _library_problem("not a gzip-compressed FIF file", exc)) from exc
    if not start:
        raise _fail(path, "empty or not a FIF file (it holds no data)")
    if start != _FIF_FILE_ID:
        raise _fail(path, f"empty or not a FIF file (it starts with {start!r}, not a FIF file-id tag)")


def _fif_truncation(path: Path, raw: Any, extra: dict[str, Any]) -> tuple[int, str] | None:
    """Where a truncated FIF file's samples stop being readable, and what to say then; None if it is whole.

    MNE opens a FIF file cut short with what it finds: a data buffer running past the end of the file fails only
    when read, and a file cut between tags opens with fewer samples and a mere warning. Reads up to the first
    sample affected succeed (a replay gets that far); reading it fails with the message (see _MNEReader).
    """
    n = int(raw.n_times)
    with contextlib.suppress(AttributeError, IndexError, KeyError, TypeError, ValueError, OSError):
        first = int(raw.first_samp)
        for fname, ex in zip(raw.filenames, raw._raw_extras, strict=False):
            fname = Path(fname)
            if fname.name.lower().endswith(".gz"):
                continue
            size = fname.stat().st_size
            for k, ent in enumerate(ex["ent"]):
                if ent is not None and int(ent.pos) + 16 + int(ent.size) > size:
                    a, b = int(ex["bounds"][k]) - first, int(ex["bounds"][k + 1]) - first
                    where = "file" if fname == path else f"file {fname.name}"
                    return a, (
                        f"truncated: the {where} has {size} bytes, its data for samples {a}..{b} run to byte "
                        f"{int(ent.pos) + 16 + int(ent.size)}"
                    )
    cut = [w for w in extra.get("warnings", ()) if w.startswith(("Invalid tag with only", "FIF tag directory missing"))]
    if cut:
        said = re.sub(r" in file .*|,? possibly corrupted file.*", "", cut[0])  # the path is said anyway
        return n - 1, f"truncated: the file ends inside its data, after sample {n} ({_one_line(said, 120)})"
    return None


# Bytes per value of BrainVision binary formats, as MNE names them.
_BRAINVISION_BYTES = {"short": 2, "int": 4, "single": 4}
_VMRK_POSITION = re.compile(rb"^\s*Mk\d+\s*=[^,\r\n]*,[^,\r\n]*,\s*(\d+)", re.MULTILINE)


def _brainvision_size_check(path: Path, raw: Any) -> None:
    """Refuse a BrainVision data file that is not a whole number of sample frames (channels x bytes per value),
    shorter than the header's DataPoints, or ending before the markers of the .vmrk: MNE reads what is there."""
    try:
        ex = raw._raw_extras[0]
        data = Path(raw.filenames[0])
        fmt = ex["fmt"]
    except (AttributeError, IndexError, KeyError, TypeError):
        return
    n_samples = int(raw.n_times)
    if isinstance(fmt, str) and fmt in _BRAINVISION_BYTES:
        frame = _BRAINVISION_BYTES[fmt] * int(raw.info["nchan"])
        size = data.stat().st_size
        if size % frame:
            raise _fail(
                path,
                f"truncated or corrupt: {data.name} holds {size} bytes, not a whole number of {frame}-byte sample "
                f"frames ({raw.info['nchan']} channels x {_BRAINVISION_BYTES[fmt]} bytes)",
            )
        if size < n_samples * frame:  # vectorized files state their DataPoints
            raise _fail(
                path,
                f"truncated: {data.name} holds {size // frame} samples, the header says {n_samples} (DataPoints)",
            )
    last = _vmrk_last_position(path)
    if last is not None and last - 1 > n_samples:  # positions count from 1; MNE keeps markers up to the end
        raise _fail(path, f"truncated: markers run to sample {last}, the data file holds {n_samples} samples")


def _vmrk_last_position(vhdr: Path) -> int | None:
    """The largest marker position (data points, from 1) in the marker file the header names (else the .vmrk
    beside it), None if there is none."""
    head = vhdr.read_bytes().decode("latin-1")
    named = re.search(r"^\s*MarkerFile\s*=\s*(.*?)\s*$", head, re.MULTILINE)
    candidates = [vhdr.parent / named.group(1)] if named and named.group(1) else []
    candidates.append(vhdr.with_suffix(".vmrk"))
    for mrk in candidates:
        if mrk.is_file():
            positions = [int(m) for m in _VMRK_POSITION.findall(mrk.read_bytes())]
            return max(positions) if positions else None
    return None


def _eeglab_size_check(path: Path, raw: Any) -> None:
    """Refuse an EEGLAB .fdt data file whose size is not the dataset's channels x samples x 4 bytes (float32):
    MNE fails only when reading past a short file's end, and reads a longer one's first bytes."""
    try:
        data = Path(raw.filenames[0])
    except (AttributeError, IndexError, TypeError):
        return
    if data.resolve() == path.resolve():  # data held in the .set itself
        return
    n_ch, n_samples = len(raw.ch_names), int(raw.n_times)
    expected = 4 * n_ch * n_samples
    size = data.stat().st_size
    if size != expected:
        problem = "truncated" if size < expected else "corrupt (not this dataset's data file?)"
        raise _fail(
            path,
            f"{problem}: {data.name} holds {size} bytes, the dataset's {n_ch} channels x {n_samples} samples "
            f"need {expected} (float32)",
        )


def _code_onsets(codes: np.ndarray) -> np.ndarray:
    """Sample indices where events begin on a trigger line ``(n,)`` of integer codes: where the code leaves the
    idle level (the commonest code: 0 on most systems, not on all), the sample before the first counting as
    idle; changes of code before the return to idle belong to the same event, and the return to idle ends it."""
    if codes.size == 0:
        return np.empty(0, np.int64)
    values, counts = np.unique(codes, return_counts=True)
    idle = values[np.argmax(counts)]
    prev = np.concatenate(([idle], codes[:-1]))
    return np.flatnonzero((codes != idle) & (prev == idle))


def _mne_pulses(
    path: Path,
    fmt: str,
    opts: _Options,
    raw: Any,
    names: list[str],
    types: list[str],
    picks: list[int],
    extra: dict[str, Any],
) -> tuple[np.ndarray, str]:
    """Pulse times (s from the first sample) from annotations, else from a stim channel's onsets."""
    ann = raw.annotations
    if len(ann):
        desc = [str(d) for d in ann.description]
        match = opts.pulse_marks(desc)
        extra["annotations"] = sorted(set(desc))
        if match.any():
            onsets = np.asarray(ann.onset, dtype=np.float64)[match] - float(raw.first_time)
            return onsets, "annotations"
    for i, t in enumerate(types):
        if t != "stim" or i in picks:
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            v = raw.get_data(picks=[i], verbose="warning")[0]
        _note_warnings(extra, caught)
        codes = np.rint(np.nan_to_num(v)).astype(np.int64)
        if fmt == "BDF":
            codes &= 0xFFFF  # BioSemi Status: trigger lines are the low 16 bits, the rest are status flags
        onsets = _code_onsets(codes)
        if onsets.size:
            return onsets / float(raw.info["sfreq"]), f"stim channel:{names[i]}"
    return np.empty(0), "none"


# ---------------------------------------------------------------------------------------------- XDF


class _LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(_one_line(record.getMessage(), 200))


def _first(d: Any, key: str, default: Any = None) -> Any:
    """``d[key][0]`` of pyxdf's XML-as-dict structures, or ``default``."""
    if not isinstance(d, dict):
        return default
    v = d.get(key)
    if isinstance(v, list):
        return v[0] if v else default
    return default if v is None else v


def _flatten(d: Any) -> Any:
    """pyxdf's XML dicts with one-element lists unwrapped (for ``extra``)."""
    if isinstance(d, dict):
        return {k: _flatten(v) for k, v in d.items()}
    if isinstance(d, list):
        return _flatten(d[0]) if len(d) == 1 else [_flatten(v) for v in d]
    return d


def _xdf_channels(info: dict[str, Any], n: int) -> tuple[list[str], list[str | None]]:
    """Channel labels and units (None where absent) from a stream header's desc/channels/channel."""
    entries: list[Any] = []
    chans = _first(_first(info, "desc"), "channels")
    if isinstance(chans, dict) and isinstance(chans.get("channel"), list):
        entries = chans["channel"]
    labels: list[str] = []
    units: list[str | None] = []
    for ch in entries[:n]:
        label = _first(ch, "label")
        unit = _first(ch, "unit")
        labels.append(str(label) if label else f"ch{len(labels) + 1}")
        units.append(str(unit).strip() if unit else None)
    labels += [f"ch{i + 1}" for i in range(len(labels), n)]
    units += [None] * (n - len(units))
    return labels, units


def _describe_streams(streams: list[dict[str, Any]]) -> str:
    if not streams:
        return "the file holds no streams"
    parts = [
        f"{_first(s['info'], 'name', '?')!r} (type {_first(s['info'], 'type', '?')!r}, "
        f"{_first(s['info'], 'channel_format', '?')})"
        for s in streams
    ]
    return "streams: " + ", ".join(parts)


def _open_xdf(path: Path, fmt: str, opts: _Options) -> RecordingReader:
    opener: Callable[..., Any] = gzip.open if path.suffix.lower() == ".xdfz" else open
    with opener(path, "rb") as f:
        magic = f.read(4)
    if magic != b"XDF:":
        raise _fail(path, f"not an XDF file (it starts with {magic!r}, not b'XDF:')")
    import pyxdf

    logger = logging.getLogger("pyxdf.pyxdf")
    capture = _LogCapture()
    old_propagate = logger.propagate
    logger.addHandler(capture)
    logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            streams, header = pyxdf.load_xdf(str(path), dejitter_timestamps=False, synchronize_clocks=False)
    finally:
        logger.removeHandler(capture)
        logger.propagate = old_propagate
    extra: dict[str, Any] = {"header": _flatten(header["info"]) if isinstance(header, dict) else None}
    _note_warnings(extra, caught)
    if capture.messages:
        extra.setdefault("warnings", []).extend(capture.messages)
    emg = _xdf_choose(path, opts, streams, capture.messages)
    info = emg["info"]
    name = str(_first(info, "name", ""))
    x = emg["time_series"]
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "biuf":
        raise _fail(path, f"stream {name!r} holds {_first(info, 'channel_format', 'non-numeric')} values, not samples")
    x = x.reshape(x.shape[0], -1) if x.ndim != 2 else x
    n, c = x.shape
    if n == 0:
        raise _fail(path, f"stream {name!r} holds no samples")
    ts = np.asarray(emg["time_stamps"], dtype=np.float64).copy()
    if ts.shape != (n,):
        raise _fail(path, f"stream {name!r}: {ts.shape[0]} timestamps for {n} samples")
    rate = float(_first(info, "nominal_srate", 0) or 0)
    if rate <= 0:
        if opts.rate_hz is None:
            raise _fail(path, f"stream {name!r} has no nominal sampling rate (irregular stream): give --rate")
        rate = opts.rate_hz
    labels, stated = _xdf_channels(info, c)
    if opts.channels is not None:
        picks = _pick_by_name(path, labels, opts.channels)
        x, labels, stated = x[:, picks], [labels[i] for i in picks], [stated[i] for i in picks]
    given = _units_for(opts, len(labels), path)
    orig: list[str] = []
    scale = np.empty(len(labels))
    for j, (label, unit) in enumerate(zip(labels, stated, strict=True)):
        if unit is not None and _is_voltage(unit):
            orig.append(unit)
            scale[j] = unit_to_volts(unit)
        elif given is not None:
            orig.append(given[j] if unit is None else f"{unit} (taken as {given[j]})")
            scale[j] = unit_to_volts(given[j])
        elif unit is None:
            orig.append("assumed uV")
            scale[j] = 1e-6
        else:
            raise _fail(
                path,
                f"channel {label!r} of stream {name!r} has unit {unit!r}, not a voltage (V, mV, uV, nV): "
                "give the unit of the values (units=...)",
            )
    volts = x.astype(np.float64) * scale
    pulse_t, amps, source = _xdf_pulses(streams, opts)
    extra["stream"] = {
        "name": name,
        "type": _first(info, "type"),
        "source_id": _first(info, "source_id"),
        "channel_format": _first(info, "channel_format"),
        "created_at": _first(info, "created_at"),
    }
    meas_date = None
    when = _first(extra["header"], "datetime") if isinstance(extra["header"], dict) else None
    if isinstance(when, str):
        with contextlib.suppress(ValueError):
            meas_date = datetime.fromisoformat(when)
    rinfo, clock = _finish(
        path, fmt, rate, n, labels, orig, pulse_t, amps, source, timestamps=ts, meas_date=meas_date, extra=extra
    )
    return _ArrayReader(rinfo, clock, volts)


def _xdf_choose(path: Path, opts: _Options, streams: list[dict[str, Any]], log: list[str]) -> dict[str, Any]:
    def key(s: dict[str, Any], k: str) -> str:
        return str(_first(s["info"], k, ""))

    if opts.stream is not None:
        found = [s for s in streams if opts.stream in (key(s, "name"), key(s, "type"))]
        if not found:
            want = opts.stream.lower()
            found = [s for s in streams if want in (key(s, "name").lower(), key(s, "type").lower())]
        what = f"named or typed {opts.stream!r}"
    else:
        found = [s for s in streams if key(s, "type").lower() == "emg"]
        if not found:
            found = [s for s in streams if key(s, "name").lower() == "emg"]
        what = "of type or name 'EMG'"
    if not found:
        hint = f"; the reader reported: {log[0]}" if (log and not streams) else ""
        raise _fail(path, f"no EMG stream {what} ({_describe_streams(streams)}){hint}")
    if len(found) > 1:
        raise _fail(path, f"{len(found)} streams {what} ({_describe_streams(found)}): choose one with --stream")
    return found[0]


def _xdf_pulses(streams: list[dict[str, Any]], opts: _Options) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Pulse times (recording clock), amplitudes and source: the Pulses stream, else Markers streams."""
    for s in streams:
        info = s["info"]
        if str(_first(info, "name", "")) != "Pulses":
            continue
        x = s["time_series"]
        ts = np.asarray(s["time_stamps"], dtype=np.float64)
        if not isinstance(x, np.ndarray) or ts.size == 0:
            continue
        labels, _ = _xdf_channels(info, x.shape[1] if x.ndim == 2 else 1)
        amps = None
        if "amplitude_ma" in labels:
            amps = np.asarray(x, dtype=np.float64).reshape(ts.size, -1)[:, labels.index("amplitude_ma")]
        return ts, amps, "Pulses stream"
    times: list[np.ndarray] = []
    names: list[str] = []
    for s in streams:
        info = s["info"]
        if str(_first(info, "type", "")).lower() != "markers" or str(_first(info, "channel_format", "")) != "string":
            continue
        ts = np.asarray(s["time_stamps"], dtype=np.float64)
        texts = [
            " ".join(str(v) for v in row) if isinstance(row, (list, tuple)) else str(row) for row in s["time_series"]
        ]
        match = opts.pulse_marks(texts)
        if match.size and match.any():
            times.append(ts[: match.size][match])
            names.append(str(_first(info, "name", "")))
    if times:
        return np.concatenate(times), None, "markers:" + ",".join(names)
    return np.empty(0), None, "none"


# --------------------------------------------------------------------------------------------- WFDB


# Bytes per sample of the WFDB storage formats (as a fraction: 212 packs 2 samples in 3 bytes, 310/311 3 in 4);
# the FLAC formats (508, 516, 524) have no fixed size.
_WFDB_BYTES_PER_SAMPLE = {
    "8": Fraction(1),
    "16": Fraction(2),
    "24": Fraction(3),
    "32": Fraction(4),
    "61": Fraction(2),
    "80": Fraction(1),
    "160": Fraction(2),
    "212": Fraction(3, 2),
    "310": Fraction(4, 3),
    "311": Fraction(4, 3),
}


def _wfdb_states_rate(path: Path) -> bool:
    """Whether the record line of the WFDB header ``path`` gives a sampling frequency (its third field): when it
    does not, wfdb assumes the WFDB default of 250 Hz."""
    for line in path.read_text(encoding="latin-1").splitlines():
        fields = line.split("#", 1)[0].split()
        if fields:
            return len(fields) >= 3
    return False


def _wfdb_frames_stored(path: Path, header: Any) -> int | None:
    """Frames the data files of a single-segment WFDB ``header`` hold (the fewest over its files), from their sizes;
    None when no file has a fixed sample size. A data file that is missing is refused."""
    files: dict[str, tuple[str, int, int]] = {}  # file -> (format, samples per frame, byte offset)
    for name, f, spf, offset in zip(
        header.file_name, header.fmt, header.samps_per_frame, header.byte_offset or [None] * header.n_sig, strict=True
    ):
        if name == "~":  # a null signal: no data file
            continue
        _, k, o = files.get(name, (str(f), 0, int(offset or 0)))
        files[name] = (str(f), k + int(spf or 1), o)
    frames = []
    for name, (f, spf, offset) in files.items():
        data = path.parent / name
        if not data.is_file():
            raise _fail(path, f"the data file {name} of this record is missing")
        size = _WFDB_BYTES_PER_SAMPLE.get(f)
        if size is not None:
            frames.append(max(0, data.stat().st_size - offset) // (size * spf))
    return min(frames) if frames else None


#: Extensions beside a WFDB header that are not annotation files (the header, data, sidecar documents and exports).
_NOT_ANNOTATORS = frozenset(
    "hea dat mat edf bdf csv tsv txt md json xml html htm pdf png jpg jpeg svg npy npz h5 hdf5 xdf fif zip gz "
    "xws log ini cfg yaml yml toml py m".split()
)


def _wfdb_pulses(
    wfdb: Any, path: Path, opts: _Options, frame_rate: float, data_files: set[str], extra: dict[str, Any]
) -> tuple[np.ndarray, str]:
    """Pulse times (s from the first sample) from the record's annotation files (``<record>.<annotator>`` beside
    the header, e.g. ``.atr``): the annotations whose text (the aux note, else the symbol), or whose annotator's
    name, ``pulse_annotation`` finds, from the first annotator that has any."""
    found: list[tuple[str, np.ndarray, list[str]]] = []
    for f in sorted(path.parent.glob(glob.escape(path.stem) + ".*")):
        ext = f.name[len(path.stem) + 1 :]
        if f.name in data_files or ext.lower() in _NOT_ANNOTATORS or not re.fullmatch(r"\w+", ext) or not f.is_file():
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ann = wfdb.rdann(str(path.with_suffix("")), ext)
        except Exception as exc:  # not an annotation file after all (wfdb raises many kinds): say so, go on
            extra.setdefault("warnings", []).append(
                f"{f.name}: not read as WFDB annotations ({_one_line(str(exc), 80)})"
            )
            continue
        symbols = list(ann.symbol or [])
        notes = list(ann.aux_note or [""] * len(symbols))
        texts = [(n or "").strip("\x00 ").strip() or str(s) for s, n in zip(symbols, notes, strict=False)]
        fs = float(ann.fs) if ann.fs else frame_rate
        found.append((ext, np.asarray(ann.sample, dtype=np.float64)[: len(texts)] / fs, texts))
    if not found:
        return np.empty(0), "none"
    extra["annotators"] = [ext for ext, _, _ in found]
    extra["annotations"] = sorted({t for _, _, texts in found for t in texts})
    for ext, times, texts in found:
        # all of an annotator whose name the pattern finds, else the annotations whose texts it finds
        by_name = opts.pulse_annotation.search(ext) is not None
        match = np.ones(len(texts), dtype=bool) if by_name else opts.pulse_marks(texts)
        if match.any():
            return times[match], f"annotations:{ext}"
    return np.empty(0), "none"


def _open_wfdb(path: Path, fmt: str, opts: _Options) -> RecordingReader:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # wfdb's own use of pandas, on import
            import wfdb
    except ImportError:
        raise _fail(path, "reading WFDB records needs the wfdb package: pip install 'closedloop[wfdb]'") from None
    record_name = str(path.with_suffix(""))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        header = wfdb.rdheader(record_name, rd_segments=True)  # a multi-segment record: its segments' headers too
    extra: dict[str, Any] = {"record_name": path.stem}
    _note_warnings(extra, caught)
    multi = bool(getattr(header, "seg_name", None))
    # the channels' units and samples per frame: a multi-segment record's from its first segment (the layout
    # segment of a variable layout, whose channels are the record's; every segment of a fixed layout alike)
    signals = next((seg for seg in header.segments if seg is not None), None) if multi else header
    names = [str(n) for n in (header.sig_name or [])]
    if not names or signals is None:
        raise _fail(path, "the header describes no signals")
    extra["segments"] = len(header.seg_name) if multi else 1
    units_all = [str(u) if u else "mV" for u in (signals.units or ["mV"] * len(names))]  # WFDB's default: mV
    spf_all = [int(k or 1) for k in (signals.samps_per_frame or [1] * len(names))]
    if opts.channels is not None:
        picks = _pick_by_name(path, names, opts.channels)
        extra["channel_rule"] = "by name"
        bad = [f"{names[i]} ({units_all[i]})" for i in picks if not _is_voltage(units_all[i])]
        if bad:
            raise _fail(path, f"channels not in a voltage unit: {', '.join(bad)}")
    else:
        picks = [i for i, u in enumerate(units_all) if _is_voltage(u)]
        extra["channel_rule"] = "unit is a voltage"
        if not picks:
            listing = ", ".join(f"{n} ({u})" for n, u in zip(names, units_all, strict=True))
            raise _fail(path, f"no EMG channels (no channel in a voltage unit; channels: {listing})")
    frame_rate = float(header.fs or 0) if _wfdb_states_rate(path) else 0.0
    if frame_rate <= 0:
        if opts.rate_hz is None:
            raise _fail(path, "no sampling rate in the header: give --rate")
        frame_rate = opts.rate_hz
    spf = spf_all[picks[0]]
    if any(spf_all[i] != spf for i in picks):
        listing = ", ".join(f"{names[i]} {frame_rate * spf_all[i]:g} Hz" for i in picks)
        raise _fail(
            path,
            f"the channels picked have different sampling rates ({listing}): pick channels of one rate with --channels",
        )
    if spf > 1:
        extra["samples_per_frame"] = spf
    frames = header.sig_len
    if not multi:
        stored = _wfdb_frames_stored(path, header)
        if frames is None:
            frames = stored  # a header may leave the length out: the data files hold it
        elif stored is not None and stored < frames:
            raise _fail(path, f"truncated: the header states {frames} samples per signal, the data files hold {stored}")
    if frames is None:
        raise _fail(path, "the header does not state the signal length")
    meas_date = None
    with contextlib.suppress(AttributeError, TypeError, ValueError):
        if header.base_date is not None and header.base_time is not None:
            meas_date = datetime.combine(header.base_date, header.base_time)
    scale = np.array([unit_to_volts(units_all[i]) for i in picks])
    data_files = {
        str(n)
        for seg in ([header] if not multi else header.segments)
        if seg is not None
        for n in (getattr(seg, "file_name", None) or ())
    }
    pulses, source = _wfdb_pulses(wfdb, path, opts, frame_rate, data_files, extra)
    info, clock = _finish(
        path,
        fmt,
        frame_rate * spf,
        int(frames) * spf,
        [names[i] for i in picks],
        [units_all[i] for i in picks],
        pulses,
        None,
        source,
        meas_date=meas_date,
        extra=extra,
    )
    return _WFDBReader(info, clock, wfdb, record_name, picks, scale, spf, whole=header.sig_len is None)


# ---------------------------------------------------------------------------------------------- MAT


def _open_mat(path: Path, fmt: str, opts: _Options) -> RecordingReader:
    with open(path, "rb") as f:
        head = f.read(1032)
    hdf5 = any(head[o : o + 8] == b"\x89HDF\r\n\x1a\n" for o in (0, 512, 1024))  # HDF5 superblock positions
    extra: dict[str, Any] = {}
    if head.startswith(b"MATLAB 7.3") or hdf5:
        variables = _mat73_variables(path)
        extra["mat_version"] = "7.3 (HDF5)"
    else:
        from scipy.io import loadmat
        from scipy.io.matlab import MatReadError

        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                m = loadmat(str(path))
        except NotImplementedError as exc:  # scipy's message for a format it does not read
            raise _fail(path, _library_problem("not a readable MATLAB file", exc)) from exc
        except MatReadError as exc:
            raise _fail(path, _library_problem("not a readable MATLAB file", exc)) from exc
        _note_warnings(extra, caught)
        variables = {k: v for k, v in m.items() if not k.startswith("__")}

    def numeric(v: Any) -> bool:
        return isinstance(v, np.ndarray) and v.dtype.kind in "iuf" and v.size > 0

    def listing() -> str:
        parts = [
            f"{k} {v.dtype}{list(v.shape)}"
            if isinstance(v, np.ndarray)
            else f"{k} {v}"
            if isinstance(v, str)
            else f"{k} ({type(v).__name__})"  # str: a v7.3 placeholder
            for k, v in variables.items()
        ]
        return ", ".join(parts) or "none"

    rate = None
    for k in _MAT_RATE_NAMES:
        if k in variables:
            v = variables[k]
            vals = np.asarray(v).ravel() if numeric(v) else np.empty(0)
            if vals.size != 1 or not math.isfinite(float(vals[0])) or float(vals[0]) <= 0:
                got = (
                    f"{float(vals[0]):g}"
                    if vals.size == 1
                    else f"{v.dtype}{list(v.shape)}"
                    if isinstance(v, np.ndarray)
                    else type(v).__name__
                )
                raise _fail(path, f"variable {k!r} should hold the sampling rate (one number > 0, in Hz), got {got}")
            if rate is not None and float(vals[0]) != rate:
                first = extra["rate_variable"]
                raise _fail(
                    path,
                    f"variables {first!r} ({rate:g}) and {k!r} ({float(vals[0]):g}) give different sampling rates "
                    "(Hz): keep one",
                )
            if rate is None:
                rate = float(vals[0])
                extra["rate_variable"] = k
    if rate is None:
        if opts.rate_hz is None:
            raise _fail(
                path,
                f"no sampling rate in the file: give --rate (looked for a variable {'/'.join(_MAT_RATE_NAMES)})",
            )
        rate = opts.rate_hz
    if "emg" in variables and numeric(variables["emg"]) and variables["emg"].ndim <= 2:
        var = "emg"
    else:
        special = set(_MAT_RATE_NAMES) | set(_MAT_PULSE_NAMES)
        cands = [
            k
            for k, v in variables.items()
            if k not in special and numeric(v) and v.ndim in (1, 2) and max(v.shape) >= _MAT_MIN_SAMPLES
        ]
        if len(cands) != 1:
            why = "no signal variable" if not cands else f"{len(cands)} candidate signal variables"
            raise _fail(
                path,
                f"{why} (want 'emg', or a single numeric 1-D/2-D array of >= {_MAT_MIN_SAMPLES} samples); "
                f"variables: {listing()}",
            )
        var = cands[0]
    x = np.asarray(variables[var], dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    elif x.shape[0] < x.shape[1]:
        x = x.T  # (C, n) with C < n
    n, c = x.shape
    names = [var] if c == 1 else [f"{var}{i + 1}" for i in range(c)]
    if var == "emg":
        names = [f"EMG{i + 1}" for i in range(c)]
    extra["variable"] = var
    file_units = variables.get("units")
    stated: tuple[str, ...] | None = None
    if isinstance(file_units, np.ndarray) and file_units.dtype.kind == "U":
        stated = tuple(str(u).strip() for u in file_units.ravel())
    elif isinstance(file_units, np.ndarray) and file_units.dtype == object:
        stated = tuple(str(np.asarray(u).ravel()[0]).strip() for u in file_units.ravel())
    if stated is not None and len(stated) not in (1, len(names)):
        stated = None
    if stated is not None and len(stated) == 1:
        stated = stated * len(names)
    if opts.channels is not None:  # the file's units are per channel of the whole signal: picked with the channels
        picks = _pick_by_name(path, names, opts.channels)
        x, names = x[:, picks], [names[i] for i in picks]
        stated = None if stated is None else tuple(stated[i] for i in picks)
    if stated is not None and all(_is_voltage(u) for u in stated):
        orig = stated
        scale = np.array([unit_to_volts(u) for u in orig])
    else:
        given = _units_for(opts, len(names), path)
        if given is not None:
            orig, scale = given, np.array([unit_to_volts(u) for u in given])
        else:
            orig, scale = ("assumed uV",) * len(names), np.full(len(names), 1e-6)
    pulses, source = np.empty(0), "none"
    for k in _MAT_PULSE_NAMES:
        if k in variables and numeric(variables[k]):
            pulses, source = np.asarray(variables[k], dtype=np.float64).ravel(), f"variable:{k}"
            break
    info, clock = _finish(path, fmt, rate, n, names, orig, pulses, None, source, extra=extra)
    return _ArrayReader(info, clock, x * scale)


def _mat73_variables(path: Path) -> dict[str, Any]:
    """The top-level variables of a MATLAB v7.3 file (HDF5, read with h5py) as ``loadmat`` gives those of older
    ones: numeric arrays in MATLAB's shape (HDF5 stores them transposed), char arrays as str arrays; structs,
    cells and other classes as a placeholder naming their class (listed in errors, never used as signals)."""
    import h5py

    out: dict[str, Any] = {}
    try:
        with h5py.File(path, "r") as f:
            for name, item in f.items():
                if name.startswith("#"):  # '#refs#', '#subsystem#': MATLAB's internal groups
                    continue
                cls = item.attrs.get("MATLAB_class", b"")
                cls = cls.decode("ascii", "replace") if isinstance(cls, bytes) else str(cls)
                if not isinstance(item, h5py.Dataset) or item.attrs.get("MATLAB_empty", 0):
                    out[name] = f"<{cls or 'group'}>"
                elif cls == "char":
                    out[name] = _mat73_chars(item)
                elif cls == "cell" and item.dtype == h5py.ref_dtype:
                    out[name] = _mat73_cellstr(f, item, cls)
                elif item.dtype.kind in "iuf":
                    out[name] = np.asarray(item[()]).T
                else:
                    out[name] = f"<{cls or item.dtype}>"
    except OSError as exc:
        raise _fail(path, _library_problem("not a readable MATLAB v7.3 (HDF5) file", exc)) from exc
    return out


def _mat73_chars(item: Any) -> np.ndarray:
    """A v7.3 char array (uint16 codes, stored transposed) as a str array of its rows; empty: ``[""]``."""
    if item.attrs.get("MATLAB_empty", 0):
        return np.array([""])
    codes = np.asarray(item[()], dtype=np.uint16).T
    return np.array(["".join(map(chr, row)) for row in np.atleast_2d(codes)])


def _mat73_cellstr(f: Any, item: Any, cls: str) -> np.ndarray | str:
    """A v7.3 cell array of char arrays (e.g. ``units = {'mV', 'uV'}``: object references to char datasets in
    ``#refs#``) as a str array, one string per cell in MATLAB's column-major order as ``loadmat`` gives it;
    any other cell array as a placeholder naming its class."""
    texts = []
    for ref in np.asarray(item[()]).T.ravel():
        target = f[ref] if ref else None
        kind = None if target is None else target.attrs.get("MATLAB_class", b"")
        if target is None or (kind.decode("ascii", "replace") if isinstance(kind, bytes) else str(kind)) != "char":
            return f"<{cls}>"
        row = _mat73_chars(target)
        if row.size != 1:  # a char matrix in a cell
            return f"<{cls}>"
        texts.append(str(row[0]))
    return np.array(texts).reshape(item.shape[::-1]) if texts else f"<{cls}>"


# -------------------------------------------------------------------------------------- OpenSignals


def _attr(v: Any) -> Any:
    """An HDF5 attribute as a plain Python value."""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray):
        return [_attr(x) for x in v.tolist()] if v.dtype.kind in "OSU" else v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def _open_opensignals(path: Path, fmt: str, opts: _Options) -> RecordingReader:
    import h5py

    f = h5py.File(path, "r")
    try:
        return _opensignals_reader(path, fmt, opts, f)
    except BaseException:
        f.close()
        raise


def _opensignals_reader(path: Path, fmt: str, opts: _Options, f: Any) -> RecordingReader:
    import h5py

    devices = {
        k: g
        for k, g in f.items()
        if isinstance(g, h5py.Group) and "sampling rate" in g.attrs and isinstance(g.get("raw"), h5py.Group)
    }
    if not devices:
        raise _fail(path, "not an OpenSignals file (no device group with a 'raw' group and a 'sampling rate')")

    def emg_channels(g: Any) -> list[tuple[int, str]]:
        out = []
        for k, ds in g["raw"].items():
            m = re.fullmatch(r"channel_(\d+)", k)
            if m and isinstance(ds, h5py.Dataset) and _sensor(ds) in _OPENSIGNALS_EMG:
                out.append((int(m.group(1)), k))
        return sorted(out)

    if opts.stream is not None:
        if opts.stream not in devices:
            raise _fail(path, f"no device {opts.stream!r} (devices: {', '.join(devices)})")
        name = opts.stream
    else:
        with_emg = [k for k, g in devices.items() if emg_channels(g)]
        if len(devices) == 1:
            name = next(iter(devices))
        elif len(with_emg) == 1:
            name = with_emg[0]
        else:
            raise _fail(path, f"{len(devices)} devices ({', '.join(devices)}): choose one with --stream")
    g = devices[name]
    attrs = {k: _attr(v) for k, v in g.attrs.items()}
    raw = g["raw"]
    sensors = {k: str(_attr(ds.attrs.get("sensor", "?"))) for k, ds in raw.items() if k.startswith("channel_")}
    found = emg_channels(g)
    all_names = [k for _, k in found]
    if opts.channels is not None:
        wanted = _pick_by_name(path, list(sensors), opts.channels)
        keys = [list(sensors)[i] for i in wanted]
        not_emg = [k for k in keys if k not in all_names]
        if not_emg:
            raise _fail(path, f"not EMG channels: {', '.join(f'{k} ({sensors[k]})' for k in not_emg)}")
        found = [(int(k.split("_")[1]), k) for k in keys]
    if not found:
        listing = ", ".join(f"{k} ({s})" for k, s in sensors.items()) or "none"
        emg = " or ".join(repr(k) for k in _OPENSIGNALS_EMG)
        raise _fail(path, f"no EMG channels (no raw/channel_N with sensor {emg}; channels: {listing})")
    rate = float(np.asarray(attrs["sampling rate"]).ravel()[0])
    res = np.asarray(attrs.get("resolution", []), dtype=np.int64).ravel()
    numbers = np.asarray(attrs.get("channels", []), dtype=np.int64).ravel()
    columns = [str(c) for c in np.asarray(attrs.get("column", []), dtype=object).ravel()]
    bits = []
    for num, k in found:
        if res.size == 1:
            bits.append(int(res[0]))
        elif res.size and numbers.size == res.size and num in numbers.tolist():
            bits.append(int(res[numbers.tolist().index(num)]))
        elif res.size and len(columns) == res.size and f"A{num}" in columns:  # BITalino: per column (nSeq, I1, ..)
            bits.append(int(res[columns.index(f"A{num}")]))
        else:
            raise _fail(path, f"no ADC resolution for {k} (attribute 'resolution' = {res.tolist()})")
    datasets = [raw[k] for _, k in found]
    lengths = {ds.shape[0] for ds in datasets}
    if len(lengths) != 1:
        raise _fail(path, f"EMG channels of different lengths: {sorted(lengths)}")
    n = lengths.pop()
    declared = attrs.get("nsamples")
    if isinstance(declared, int) and declared > n:
        raise _fail(path, f"truncated: the device says {declared} samples, the channels hold {n}")
    meas_date = None
    with contextlib.suppress(ValueError, TypeError):
        meas_date = datetime.strptime(f"{attrs.get('date')} {attrs.get('time')}", "%Y-%m-%d %H:%M:%S.%f")
    pulses, source = _opensignals_pulses(g, int(n), rate)
    kinds = [_OPENSIGNALS_EMG[_sensor(raw[k])] for _, k in found]
    extra = {
        "device": name,
        "attrs": attrs,
        "labels": {k: _attr(raw[k].attrs.get("label", "")) for _, k in found},
        "resolution_bits": bits,
        "transfer_function": {
            k: f"V = (adc / 2**bits - 0.5) * {vcc:g} V / {gain:g} ({what})"
            for (_, k), (vcc, gain, what) in zip(found, kinds, strict=True)
        },
    }
    info, clock = _finish(
        path,
        fmt,
        rate,
        int(n),
        [k for _, k in found],
        [f"ADC ({what} transfer function)" for _, _, what in kinds],
        pulses,
        None,
        source,
        meas_date=meas_date,
        extra=extra,
    )
    volts = np.array([vcc / gain for vcc, gain, _ in kinds])
    return _OpenSignalsReader(info, clock, f, datasets, np.asarray(bits), volts)


def _sensor(ds: Any) -> str:
    """An OpenSignals dataset's ``sensor`` attribute, upper case ("" without one)."""
    return str(_attr(ds.attrs.get("sensor", ""))).strip().upper()


def _opensignals_pulses(g: Any, n: int, rate: float) -> tuple[np.ndarray, str]:
    """Pulse times (s) from the device's digital channels (``digital/digital_N``: a stimulator's trigger on a
    digital port): the event onsets (:func:`_code_onsets`) of the first one that has any."""
    import h5py

    dig = g.get("digital")
    if not isinstance(dig, h5py.Group):
        return np.empty(0), "none"
    names = sorted((k for k in dig if re.fullmatch(r"digital_\d+", k)), key=lambda k: int(k.split("_")[1]))
    for k in names:
        ds = dig[k]
        if not isinstance(ds, h5py.Dataset) or ds.ndim == 0 or ds.dtype.kind not in "iub":
            continue
        codes = np.asarray(ds[:n]).reshape(min(n, ds.shape[0]), -1)[:, 0].astype(np.int64)
        onsets = _code_onsets(codes)
        if onsets.size:
            return onsets / rate, f"digital channel:{k}"
    return np.empty(0), "none"


_OPENERS: dict[str, Callable[[Path, str, _Options], RecordingReader]] = {
    "EDF": _open_mne,
    "BDF": _open_mne,
    "GDF": _open_mne,
    "FIF": _open_mne,
    "BrainVision": _open_mne,
    "EEGLAB": _open_mne,
    "XDF": _open_xdf,
    "WFDB": _open_wfdb,
    "MAT": _open_mat,
    "OpenSignals": _open_opensignals,
}


# ----------------------------------------------------------------------------------------- replay


@dataclass(frozen=True, eq=False)
class FileChunk(Chunk):
    """A :class:`~closedloop.types.Chunk` of a replayed recording, with the amplitudes of its pulses.

    Attributes
    ----------
    pulse_amplitudes_ma:
        ``(n_pulses,)`` amplitudes (mA) of the pulses in ``pulse_times`` when the file records them
        (closedloop's own sessions), else None.
    """

    pulse_amplitudes_ma: np.ndarray | None = None


class FileSource:
    """A recording replayed as a :class:`~acquisition.base.Source`.

    Usage::

        async with FileSource("session.xdf", speed=1.0) as src:
            async for chunk in src:
                ...

    Parameters
    ----------
    path, channels, stream, rate_hz, units, pulse_annotation:
        As for :func:`open_recording`.
    chunk_size:
        Samples per chunk (the last chunk may be shorter); None: chosen on opening, by the pace and the number of
        channels: as fast as possible, about :data:`FAST_CHUNK_ELEMENTS` channel-samples (at least 4096
        samples: 4096 at 64 channels, 262144 at one), so that the estimator's per-call work is spread over many
        pulse intervals whatever the channel count; paced, 256 (smooth pacing).
    speed:
        None (or ``inf``): as fast as possible, yielding to the event loop (``asyncio.sleep(0)``) between
        chunks; ``t_arrival`` is None. A number ``s > 0``: paced at ``s`` times real time; the chunk whose
        last sample lies ``t`` seconds after the first sample is yielded at wall time ``start + t / s``
        (absolute deadlines on ``time.perf_counter``, so no drift); ``t_arrival`` is the
        ``time.perf_counter()`` at yield.
    detect_pulses:
        When the file records no pulses: ``"auto"`` detects them from their artifacts with
        :class:`~closedloop.estimation.artifacts.ArtifactDetector` (default settings, all channels) in a pass
        over the file when it is opened, and keeps them only if they form a steady pulse train
        (:func:`~closedloop.estimation.artifacts.is_pulse_train`): sharp motor-unit potentials in voluntary
        EMG can pass for artifacts but come at irregular intervals. True detects streaming and keeps
        whatever is found (the detector's warm-up, 1 s, is read ahead, so every chunk is yielded with its
        pulses already known). False: no detection (chunks of a file without pulses carry
        ``pulse_times=None``).

    Notes
    -----
    Chunks are :class:`FileChunk` objects: samples ``(n, C)`` float64 in volts (``info.units`` is
    ``"V"``), timestamps the file's own (XDF) or seconds from the first sample (``index / rate``), and
    ``pulse_times`` the pulses whose sample falls in the chunk: a pulse at time ``t`` belongs to the first
    sample whose timestamp is ``>= t - 0.5 / rate`` (its nearest sample). ``recording.pulse_source`` says
    where they come from; in detection mode ``recording.pulse_times_s`` holds the pulses detected so far
    (all of them once the replay has ended). Entering a source that is already open shares that opening
    (the file is opened once; the outermost ``async with`` closes it).
    """

    dtype = np.float64

    def __init__(
        self,
        path: str | PathLike[str],
        *,
        channels: Sequence[str] | str | None = None,
        stream: str | None = None,
        rate_hz: float | None = None,
        units: Sequence[str] | str | None = None,
        chunk_size: int | None = 256,
        speed: float | None = None,
        detect_pulses: bool | str = "auto",
        pulse_annotation: str | re.Pattern[str] = DEFAULT_PULSE_ANNOTATION,
    ) -> None:
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1
        ):
            raise ConfigError(f"FileSource chunk_size = {chunk_size!r}: must be an integer >= 1 (or None: automatic)")
        if speed is not None:
            try:
                speed = float(speed)
            except (TypeError, ValueError):
                raise ConfigError(f"FileSource speed = {speed!r}: must be a number > 0 or None") from None
            if math.isnan(speed) or speed <= 0:
                raise ConfigError(f"FileSource speed = {speed!r}: must be a number > 0 (or None: as fast as possible)")
            if math.isinf(speed):
                speed = None
        if detect_pulses not in ("auto", True, False):
            raise ConfigError(f"FileSource detect_pulses = {detect_pulses!r}: must be 'auto', True or False")
        self.path = Path(path)
        self._chunk_arg = None if chunk_size is None else int(chunk_size)
        self.chunk_size = 256 if chunk_size is None else int(chunk_size)  # until opened (see chunk_size)
        self.speed = speed
        self.detect_pulses = detect_pulses
        self._open_kwargs: dict[str, Any] = {
            "channels": channels,
            "stream": stream,
            "rate_hz": rate_hz,
            "units": units,
            "pulse_annotation": pulse_annotation,
        }
        _options(channels, stream, rate_hz, units, pulse_annotation)  # argument errors now, not on opening
        self._reader: RecordingReader | None = None
        self._info: StreamInfo | None = None
        self._recording: RecordingInfo | None = None
        self._pos = 0
        self._t0: float | None = None
        self._t_first = 0.0
        self._detector: ArtifactDetector | None = None
        self._det_idx = np.empty(0, dtype=np.int64)
        self._pulse_t: np.ndarray | None = None
        self._pulse_amp: np.ndarray | None = None
        self._pulse_idx: np.ndarray | None = None
        self._depth = 0  # nested ``async with`` blocks sharing the one opening

    # -- description ---------------------------------------------------------------------------
    def _need_open(self) -> RecordingReader:
        if self._reader is None:
            raise SourceError(f"{self.path}: the file source is not open; use 'async with source:'")
        return self._reader

    def _need_opened(self) -> None:
        if self._recording is None:
            raise SourceError(f"{self.path}: the file source has not been opened; use 'async with source:'")

    @property
    def info(self) -> StreamInfo:
        """The replayed stream: name = file stem, type ``EMG``, units ``V`` (valid once opened)."""
        self._need_opened()
        assert self._info is not None
        return self._info

    @property
    def recording(self) -> RecordingInfo:
        """What the file holds (valid once opened); ``pulse_source`` says where the pulses come from."""
        self._need_opened()
        assert self._recording is not None
        if self._detector is not None:
            return dataclasses.replace(self._recording, pulse_times_s=self._det_times() - self._t_first)
        return self._recording

    @property
    def n_samples(self) -> int:
        """Samples per channel in the recording."""
        return self.recording.n_samples

    @property
    def progress(self) -> float:
        """Fraction (0..1) of the samples yielded so far."""
        if self._recording is None:
            return 0.0
        return self._pos / self._recording.n_samples

    def clock(self) -> float:
        """The timestamp of the next sample to be yielded: the virtual "now" of the replay (s)."""
        self._need_opened()
        return self._time_of(self._pos)

    def _time_of(self, index: int) -> float:
        rec = self._recording
        assert rec is not None
        if rec.timestamps is None:
            return index / rec.rate_hz
        if index < rec.n_samples:
            return float(rec.timestamps[index])
        return float(rec.timestamps[-1]) + (index - rec.n_samples + 1) / rec.rate_hz

    # -- opening -------------------------------------------------------------------------------
    async def __aenter__(self) -> FileSource:
        if self._reader is not None:
            # already open (a replay opens the file to configure its session, then the session enters its
            # source): share that opening instead of reading the header, and detecting pulses, twice
            self._depth += 1
            return self
        reader = await asyncio.to_thread(open_recording, self.path, **self._open_kwargs)
        rec = reader.info
        self._reader = reader
        self._info = StreamInfo(
            name=self.path.stem,
            type="EMG",
            rate_hz=rec.rate_hz,
            channel_names=rec.channel_names,
            units=("V",) * rec.n_channels,
            source_id=str(self.path),
        )
        self._t_first = 0.0 if rec.timestamps is None else float(rec.timestamps[0])
        self._detector = None
        self._det_idx = np.empty(0, dtype=np.int64)
        if rec.pulse_source != "none":
            self._pulse_t = reader.pulse_times_clock
            self._pulse_amp = rec.pulse_amplitudes_ma
        elif self.detect_pulses == "auto":
            # a pass over the file first: only a steady pulse train counts as stimulation (voluntary EMG has
            # sharp motor-unit potentials that a detector can mistake for artifacts, at irregular intervals)
            found = await asyncio.to_thread(self._detect_all, reader)
            if is_pulse_train(found, rec.rate_hz):
                self._pulse_t = rec.timestamps[found] if rec.timestamps is not None else found / rec.rate_hz
                rec = dataclasses.replace(rec, pulse_source="detected", pulse_times_s=self._pulse_t - self._t_first)
                missed = pulses_missed_in_train(found)
                if missed > max(2, 0.02 * found.size):
                    rec.extra.setdefault("warnings", []).append(
                        f"about {missed} pulses of the detected train seem missed (gaps of 2 to 4 periods): their "
                        "artifacts are in other intervals' EMG; give the pulse times if the file has them elsewhere"
                    )
            else:
                self._pulse_t = None
                note = f"none ({found.size} irregular artifact-like events ignored)" if found.size else "none"
                rec = dataclasses.replace(rec, pulse_source=note)
            self._pulse_amp = None
        elif self.detect_pulses is True:
            self._detector = ArtifactDetector(rec.rate_hz, rec.n_channels)
            rec = dataclasses.replace(rec, pulse_source="detected")
            self._pulse_t = np.empty(0)
            self._pulse_amp = None
        else:
            self._pulse_t = None
            self._pulse_amp = None
        self._recording = rec
        self._pulse_idx = self._sample_of(self._pulse_t) if self._pulse_t is not None else None
        self._pos = 0
        self._t0 = None
        self._buf = np.empty((0, rec.n_channels))
        self._buf_start = 0
        self._read_to = 0  # samples read from the file (and given to the detector)
        if self._chunk_arg is None:
            self.chunk_size = max(4096, FAST_CHUNK_ELEMENTS // rec.n_channels) if self.speed is None else 256
        self._block = max(self.chunk_size, math.ceil(_READ_BLOCK_S * rec.rate_hz))
        if self.speed is None and not reader.in_memory:
            chunks = _FAST_READ_BYTES // (self.chunk_size * rec.n_channels * 8)
            self._block = max(self._block, self.chunk_size * chunks)
        self._depth = 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth <= 0:  # the outermost ``async with`` closes the file
            self.close()

    def _detect_all(self, reader: RecordingReader) -> np.ndarray:
        """Pulses detected from artifacts over the whole file (sample indices)."""
        rec = reader.info
        det = ArtifactDetector(rec.rate_hz, rec.n_channels)
        block = max(self.chunk_size, math.ceil(_READ_BLOCK_S * rec.rate_hz))
        found = [det.step(reader.read(a, min(rec.n_samples, a + block))) for a in range(0, rec.n_samples, block)]
        found.append(det.flush())
        return np.concatenate(found).astype(np.int64)

    def close(self) -> None:
        """Close the file; idempotent."""
        self._depth = 0
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()

    # -- reading -------------------------------------------------------------------------------
    def _sample_of(self, times: np.ndarray) -> np.ndarray:
        """Index of the sample each pulse time (on the recording's clock) belongs to (:func:`_sample_index`)."""
        rec = self._recording
        assert rec is not None
        return _sample_index(times, rec.rate_hz, rec.n_samples, rec.timestamps)

    def _det_times(self) -> np.ndarray:
        rec = self._recording
        assert rec is not None
        if rec.timestamps is None:
            return self._det_idx / rec.rate_hz
        return rec.timestamps[self._det_idx]

    async def _fill(self, stop: int) -> None:
        """Read until samples up to ``stop`` are buffered (and, when detecting, their pulses known)."""
        reader = self._reader
        assert reader is not None
        n = self._recording.n_samples  # type: ignore[union-attr]
        det = self._detector

        def more() -> bool:
            if self._read_to >= n:
                return False
            return self._read_to < stop or (det is not None and det.threshold_ is None)

        while more():
            a = self._read_to
            b = min(n, a + self._block)
            if reader.in_memory or self.speed is None:  # as fast as possible: no thread hand-off per block
                x = reader.read(a, b)
            else:
                x = await asyncio.to_thread(reader.read, a, b)
            if det is not None:
                found = det.step(x)
                if self._read_to + x.shape[0] >= n:
                    found = np.concatenate((found, det.flush()))
                if found.size:
                    self._det_idx = np.concatenate((self._det_idx, found))
            rest = self._buf[self._pos - self._buf_start :]
            self._buf = np.concatenate((rest, x)) if rest.shape[0] else x  # chunks of whole blocks: no copy
            self._buf_start = self._pos
            self._read_to = b

    def __aiter__(self) -> FileSource:
        return self

    async def __anext__(self) -> FileChunk:
        reader = self._need_open()
        rec = self._recording
        assert rec is not None and self._info is not None
        a = self._pos
        n = rec.n_samples
        if a >= n:
            raise StopAsyncIteration
        if self._t0 is None:
            self._t0 = time.perf_counter()
        b = min(a + self.chunk_size, n)
        await self._fill(b)
        if self._reader is not reader:  # closed while reading
            raise StopAsyncIteration
        samples = self._buf[a - self._buf_start : b - self._buf_start]
        if rec.timestamps is None:
            ts = np.arange(a, b, dtype=np.float64) / rec.rate_hz
        else:
            ts = rec.timestamps[a:b].copy()
        pulse_times, amps = self._pulses_in(a, b)
        if self.speed is None:
            await asyncio.sleep(0)
            t_arrival = None
        else:
            deadline = self._t0 + (self._time_of(b - 1) - self._t_first) / self.speed
            delay = deadline - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            t_arrival = time.perf_counter()
        self._pos = b
        return FileChunk(
            samples=samples,
            timestamps=ts,
            info=self._info,
            t_arrival=t_arrival,
            pulse_times=pulse_times,
            pulse_amplitudes_ma=amps,
        )

    def _pulses_in(self, a: int, b: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        if self._detector is not None:
            lo, hi = np.searchsorted(self._det_idx, [a, b])
            sel = self._det_idx[lo:hi]
            rec = self._recording
            assert rec is not None
            times = sel / rec.rate_hz if rec.timestamps is None else rec.timestamps[sel]
            return np.asarray(times, dtype=np.float64), None
        if self._pulse_idx is None or self._pulse_t is None:
            return None, None
        lo, hi = np.searchsorted(self._pulse_idx, [a, b])
        amps = None if self._pulse_amp is None else self._pulse_amp[lo:hi]
        return self._pulse_t[lo:hi], amps
