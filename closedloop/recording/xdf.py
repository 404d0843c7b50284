"""An incremental writer for XDF 1.0 files (the LabRecorder / Lab Streaming Layer recording format).

An XDF file is the magic bytes ``XDF:`` followed by chunks. Every chunk is
``[NumLengthBytes][Length][Tag][Content]``: ``NumLengthBytes`` is 1, 4 or 8, ``Length`` is the length of
tag plus content as that many little-endian bytes, ``Tag`` is a little-endian uint16. The chunks written
here are:

======  =============  =========================================================================
Tag     Chunk          Content
======  =============  =========================================================================
1       FileHeader     XML ``<info><version>1.0</version><datetime>..</datetime></info>``
2       StreamHeader   StreamID (uint32) + XML ``<info>`` describing the stream
3       Samples        StreamID + variable-length sample count + samples (each: timestamp + values)
4       ClockOffset    StreamID + collection time (float64, s) + offset value (float64, s)
5       Boundary       a fixed 16-byte UUID that lets readers resynchronise in damaged files
6       StreamFooter   StreamID + XML ``<info>`` with first/last timestamp and sample count
======  =============  =========================================================================

All numbers are little-endian. Nothing is buffered beyond the chunk being written, so the writer suits
recordings of any length; a file whose writer was flushed but never closed (a crash) lacks only the
stream footers, which readers such as ``pyxdf`` treat as optional.
"""

from __future__ import annotations

import math
import numbers
import re
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO
from xml.sax.saxutils import escape

import numpy as np

__all__ = [
    "BOUNDARY_UUID",
    "CHANNEL_FORMATS",
    "XDFStreamSummary",
    "XDFWriter",
]

# Chunk tags of XDF 1.0.
_TAG_FILE_HEADER = 1
_TAG_STREAM_HEADER = 2
_TAG_SAMPLES = 3
_TAG_CLOCK_OFFSET = 4
_TAG_BOUNDARY = 5
_TAG_STREAM_FOOTER = 6

BOUNDARY_UUID = bytes([0x43, 0xA5, 0x46, 0xDC, 0xCB, 0xF5, 0x41, 0x0F, 0xB3, 0x0E, 0xD5, 0x46, 0x73, 0x83, 0xCB, 0xE4])
"""Content of every Boundary chunk (16 bytes, fixed by the XDF specification)."""

# XDF channel_format -> little-endian numpy dtype of one value (None: variable-length UTF-8 strings).
CHANNEL_FORMATS: Mapping[str, np.dtype | None] = {
    "float32": np.dtype("<f4"),
    "double64": np.dtype("<f8"),
    "int16": np.dtype("<i2"),
    "int32": np.dtype("<i4"),
    "int64": np.dtype("<i8"),
    "string": None,
}
"""The channel formats :meth:`XDFWriter.add_stream` accepts, with their on-disk value types."""

_XML_DECLARATION = '<?xml version="1.0"?>'
# An XML element name (ASCII subset of the XML 1.0 Name production; no namespace prefixes).
_XML_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")
# Characters XML 1.0 cannot represent at all, not even escaped.
_XML_INVALID_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
# The one reserved element under <desc>: it is generated from channel_names and units.
_RESERVED_DESC_KEYS = frozenset({"channels"})
_TIMESTAMP_BYTES = 8  # every sample carries its own float64 timestamp


def _encode_varlen(value: int) -> bytes:
    """Encode a non-negative integer as an XDF variable-length integer.

    The result is ``[NumBytes][Value]``: one byte holding 1, 4 or 8 (the smallest that fits), then the
    value as that many little-endian bytes.
    """
    if value < 0:
        raise ValueError(f"variable-length integers are unsigned, got {value}")
    if value <= 0xFF:
        return struct.pack("<BB", 1, value)
    if value <= 0xFFFF_FFFF:
        return struct.pack("<BI", 4, value)
    if value <= 0xFFFF_FFFF_FFFF_FFFF:
        return struct.pack("<BQ", 8, value)
    raise ValueError(f"{value} does not fit in an XDF variable-length integer (8 bytes at most)")


def _chunk_header(tag: int, content_length: int) -> bytes:
    """``[NumLengthBytes][Length][Tag]`` of a chunk whose content is ``content_length`` bytes long."""
    return _encode_varlen(content_length + 2) + struct.pack("<H", tag)


def _xml_text(value: str, what: str) -> str:
    """``value`` escaped for use as XML character data or attribute-free element text."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    bad = _XML_INVALID_CHARS.search(value)
    if bad is not None:
        raise ValueError(f"{what} {value!r} contains {bad.group()!r}, which XML 1.0 cannot represent")
    return escape(value)


def _xml_name(name: str, what: str) -> str:
    """Check that ``name`` can be an XML element name and return it."""
    if not isinstance(name, str) or _XML_NAME.match(name) is None:
        raise ValueError(
            f"{what} {name!r} is not a valid XML element name "
            "(letters, digits, '_', '-', '.'; starting with a letter or '_')"
        )
    return name


def _format_number(value: numbers.Real) -> str:
    """Text of a number in XML: integers exactly, floats in their shortest round-trip form."""
    if isinstance(value, numbers.Integral):
        return str(int(value))
    return repr(float(value))


def _desc_to_xml(tag: str, value: Any, path: str) -> str:
    """Serialise one ``desc`` entry: a mapping becomes nested elements, a list or tuple repeats ``tag``."""
    _xml_name(tag, f"desc key at {path}")
    if isinstance(value, Mapping):
        inner = "".join(_desc_to_xml(k, v, f"{path}/{k}") for k, v in value.items())
        return f"<{tag}>{inner}</{tag}>"
    if isinstance(value, (list, tuple)):
        return "".join(_desc_to_xml(tag, item, f"{path}[{i}]") for i, item in enumerate(value))
    if value is None:
        return f"<{tag}></{tag}>"
    if isinstance(value, (bool, np.bool_)):
        return f"<{tag}>{'true' if value else 'false'}</{tag}>"
    if isinstance(value, numbers.Real):
        return f"<{tag}>{_format_number(value)}</{tag}>"
    if isinstance(value, str):
        return f"<{tag}>{_xml_text(value, f'desc value at {path}')}</{tag}>"
    raise TypeError(
        f"desc value at {path} has type {type(value).__name__}; "
        "allowed: dict (nested elements), list/tuple (repeated elements), str, int, float, bool, None"
    )


@dataclass(frozen=True)
class XDFStreamSummary:
    """What has been written to one stream so far (the content of its StreamFooter).

    Attributes
    ----------
    stream_id:
        The XDF StreamID (1, 2, ...).
    name:
        Stream name as given to :meth:`XDFWriter.add_stream`.
    channel_format:
        One of :data:`CHANNEL_FORMATS`.
    n_channels:
        Number of channels.
    sample_count:
        Number of samples written.
    first_timestamp, last_timestamp:
        Timestamps (s) of the first and of the last sample written; NaN while ``sample_count`` is 0.
    """

    stream_id: int
    name: str
    channel_format: str
    n_channels: int
    sample_count: int
    first_timestamp: float
    last_timestamp: float


@dataclass
class _StreamState:
    """Mutable per-stream bookkeeping of an :class:`XDFWriter` (a few numbers, nothing per sample)."""

    name: str
    channel_format: str
    n_channels: int
    record_dtype: np.dtype | None  # packed [TimeStampBytes][TimeStamp][values] for numeric formats
    sample_count: int = 0
    first_timestamp: float = math.nan
    last_timestamp: float = math.nan


class XDFWriter:
    """Write an XDF 1.0 file incrementally: stream headers, sample chunks, clock offsets, footers.

    Creating the writer creates the file and writes the magic bytes and the FileHeader chunk. Then
    :meth:`add_stream` declares streams (at any time), :meth:`write_samples` appends one Samples chunk
    per call, and :meth:`close` writes one StreamFooter per stream. Each chunk goes straight to the
    file; memory use does not grow with the length of the recording.

    Not thread-safe, by design: one writer thread owns the instance and makes every call. Other threads
    hand their data to that thread (e.g. through a queue).

    Parameters
    ----------
    path:
        The file to create. The parent directory must exist.
    overwrite:
        If False (the default) an existing file is never replaced: :class:`FileExistsError` is raised.

    Raises
    ------
    OSError
        The file cannot be created or written (including :class:`FileExistsError`). OS errors from any
        method propagate unchanged.

    Notes
    -----
    Invalid arguments raise :class:`ValueError` or :class:`TypeError` before anything is written, so a
    rejected call never leaves a partial chunk in the file.

    Examples
    --------
    >>> with XDFWriter("session.xdf") as w:  # doctest: +SKIP
    ...     sid = w.add_stream("EMG", "EMG", ["biceps", "triceps"], ["microvolts"], 2048.0, "float32")
    ...     w.write_samples(sid, samples, timestamps)
    """

    def __init__(self, path: str | PathLike[str], *, overwrite: bool = False) -> None:
        self._path = Path(path)
        self._streams: dict[int, _StreamState] = {}
        self._closed = False
        self._file: BinaryIO = open(self._path, "wb" if overwrite else "xb")
        try:
            self._file.write(b"XDF:")
            now = datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")
            header = f"{_XML_DECLARATION}<info><version>1.0</version><datetime>{now}</datetime></info>"
            self._write_chunk(_TAG_FILE_HEADER, header.encode("utf-8"))
        except BaseException:
            self._closed = True
            self._file.close()
            raise

    # ------------------------------------------------------------------ properties

    @property
    def path(self) -> Path:
        """The file being written."""
        return self._path

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self._closed

    @property
    def stream_ids(self) -> tuple[int, ...]:
        """The ids of all streams added so far, in order."""
        return tuple(self._streams)

    def summary(self, stream_id: int) -> XDFStreamSummary:
        """What has been written to stream ``stream_id`` so far (raises ValueError for unknown ids)."""
        s = self._stream(stream_id)
        return XDFStreamSummary(
            stream_id=stream_id,
            name=s.name,
            channel_format=s.channel_format,
            n_channels=s.n_channels,
            sample_count=s.sample_count,
            first_timestamp=s.first_timestamp,
            last_timestamp=s.last_timestamp,
        )

    # ------------------------------------------------------------------ chunks

    def add_stream(
        self,
        name: str,
        type: str,
        channel_names: Sequence[str],
        units: Sequence[str] | str,
        rate_hz: float,
        channel_format: str,
        source_id: str = "",
        desc: Mapping[str, Any] | None = None,
        *,
        created_at: float | None = None,
    ) -> int:
        """Declare a stream: write its StreamHeader chunk and return its stream id.

        Parameters
        ----------
        name, type:
            Stream name and content type (``"EMG"``, ``"Markers"``, ...), as in LSL.
        channel_names:
            One label per channel (at least one channel).
        units:
            One unit per channel (e.g. ``"microvolts"``); a single unit (a str, or a sequence of length
            1) applies to every channel.
        rate_hz:
            Nominal sampling rate in Hz; 0 for irregular streams.
        channel_format:
            One of ``"float32"``, ``"double64"``, ``"int16"``, ``"int32"``, ``"int64"``, ``"string"``.
        source_id:
            The LSL source_id; empty if unknown.
        desc:
            Extra entries for the header's ``<desc>`` element: a mapping becomes nested elements, a
            list or tuple repeats its key's element once per item, str and numbers become text, None an
            empty element. Keys must be valid XML names; ``"channels"`` is reserved (generated from
            ``channel_names`` and ``units``, each channel with ``<label>``, ``<unit>`` and ``<type>``,
            the stream type).
        created_at:
            The header's ``created_at`` (s, LSL clock); defaults to ``time.monotonic()``, which is the
            LSL clock on Linux.

        Returns
        -------
        int
            The new stream's id (1 for the first stream, then 2, 3, ...).

        Raises
        ------
        ValueError, TypeError
            An argument is invalid (nothing is written then).
        """
        self._check_open()
        name_xml = _xml_text(name, "stream name")
        type_xml = _xml_text(type, f"stream {name!r}: type")
        source_xml = _xml_text(source_id, f"stream {name!r}: source_id")
        if channel_format not in CHANNEL_FORMATS:
            raise ValueError(
                f"stream {name!r}: channel_format {channel_format!r} is not supported; "
                f"allowed: {', '.join(CHANNEL_FORMATS)}"
            )
        if isinstance(channel_names, str):
            raise TypeError(f"stream {name!r}: channel_names must be a sequence of str, not a str")
        labels = [_xml_text(c, f"stream {name!r}: channel name") for c in channel_names]
        n_channels = len(labels)
        if n_channels == 0:
            raise ValueError(f"stream {name!r}: at least one channel is required")
        unit_list = [units] if isinstance(units, str) else list(units)
        if len(unit_list) == 1:
            unit_list = unit_list * n_channels
        if len(unit_list) != n_channels:
            raise ValueError(f"stream {name!r}: {n_channels} channel names but {len(unit_list)} units")
        unit_xml = [_xml_text(u, f"stream {name!r}: unit") for u in unit_list]
        if isinstance(rate_hz, bool) or not isinstance(rate_hz, numbers.Real):
            raise TypeError(f"stream {name!r}: rate_hz must be a number, got {rate_hz!r}")
        if not (math.isfinite(rate_hz) and rate_hz >= 0):
            raise ValueError(f"stream {name!r}: rate_hz must be a finite number >= 0, got {rate_hz}")
        extra_desc = ""
        if desc is not None:
            if not isinstance(desc, Mapping):
                raise TypeError(f"stream {name!r}: desc must be a mapping, got {desc.__class__.__name__}")
            for key in desc:
                if key in _RESERVED_DESC_KEYS:
                    raise ValueError(f"stream {name!r}: desc key {key!r} is reserved (generated from channel_names)")
            extra_desc = "".join(_desc_to_xml(k, v, f"stream {name!r}: desc/{k}") for k, v in desc.items())
        created = time.monotonic() if created_at is None else float(created_at)

        channels = "".join(
            f"<channel><label>{label}</label><unit>{unit}</unit><type>{type_xml}</type></channel>"
            for label, unit in zip(labels, unit_xml, strict=True)
        )
        xml = (
            f"{_XML_DECLARATION}<info>"
            f"<name>{name_xml}</name>"
            f"<type>{type_xml}</type>"
            f"<channel_count>{n_channels}</channel_count>"
            f"<nominal_srate>{_format_number(float(rate_hz))}</nominal_srate>"
            f"<channel_format>{channel_format}</channel_format>"
            f"<source_id>{source_xml}</source_id>"
            f"<created_at>{_format_number(created)}</created_at>"
            f"<desc><channels>{channels}</channels>{extra_desc}</desc>"
            "</info>"
        )

        value_dtype = CHANNEL_FORMATS[channel_format]
        record_dtype = None
        if value_dtype is not None:
            # Packed (align=False) layout of one sample on disk: no padding between the fields.
            record_dtype = np.dtype(
                [("ts_bytes", "u1"), ("ts", "<f8"), ("values", value_dtype, (n_channels,))], align=False
            )
        stream_id = len(self._streams) + 1
        self._write_chunk(_TAG_STREAM_HEADER, struct.pack("<I", stream_id) + xml.encode("utf-8"))
        self._streams[stream_id] = _StreamState(
            name=name, channel_format=channel_format, n_channels=n_channels, record_dtype=record_dtype
        )
        return stream_id

    def write_samples(self, stream_id: int, samples: Any, timestamps: Any) -> None:
        """Append one Samples chunk to stream ``stream_id``.

        Parameters
        ----------
        stream_id:
            An id returned by :meth:`add_stream`.
        samples:
            Numeric formats: an ``(n_samples, n_channels)`` array of any bool/int/float dtype, cast to the
            stream's format (floats to integer formats truncate toward zero; values outside the integer
            format's range, NaN and inf raise ValueError). ``"string"``: a sequence of ``n_samples``
            sequences of ``n_channels`` str each (stored as UTF-8).
        timestamps:
            ``(n_samples,)`` finite timestamps in seconds, stored as float64.

        Raises
        ------
        ValueError
            Unknown stream id, wrong shapes (the message names the stream and the counts), non-finite
            timestamps, or integer values out of range. Nothing is written then.
        TypeError
            Samples of a dtype that cannot be cast (complex, object, str for numeric streams; non-str
            values for string streams).

        Notes
        -----
        ``n_samples == 0`` writes nothing. Numeric samples are packed in one vectorised step (a packed
        numpy structured array); only string samples are packed in a Python loop.
        """
        self._check_open()
        s = self._stream(stream_id)
        ts = np.asarray(timestamps)
        if ts.dtype.kind not in "iuf":
            raise TypeError(f"stream {s.name!r}: timestamps must be numeric, got dtype {ts.dtype}")
        ts = ts.astype(np.float64, copy=False)
        if ts.ndim != 1:
            raise ValueError(f"stream {s.name!r}: timestamps must have shape (n_samples,), got {ts.shape}")
        if not np.all(np.isfinite(ts)):
            raise ValueError(f"stream {s.name!r}: timestamps must be finite (found NaN or inf)")
        n = ts.shape[0]
        if s.record_dtype is None:
            payload = self._pack_strings(s, samples, ts)
        else:
            payload = self._pack_numeric(s, s.record_dtype, samples, ts)
        if n == 0:
            return
        content_head = struct.pack("<I", stream_id) + _encode_varlen(n)
        self._file.write(_chunk_header(_TAG_SAMPLES, len(content_head) + len(payload)))
        self._file.write(content_head)
        self._file.write(payload)
        if s.sample_count == 0:
            s.first_timestamp = float(ts[0])
        s.last_timestamp = float(ts[-1])
        s.sample_count += n

    def write_clock_offset(self, stream_id: int, collection_time: float, offset_value: float) -> None:
        """Write a ClockOffset chunk for stream ``stream_id``.

        Parameters
        ----------
        stream_id:
            An id returned by :meth:`add_stream`.
        collection_time:
            When the offset was measured, seconds on the recording computer's LSL clock.
        offset_value:
            The offset (s) to add to the stream's timestamps to map them to the recording clock.
        """
        self._check_open()
        self._stream(stream_id)
        self._write_chunk(
            _TAG_CLOCK_OFFSET, struct.pack("<Idd", stream_id, float(collection_time), float(offset_value))
        )

    def write_boundary(self) -> None:
        """Write a Boundary chunk (lets readers resynchronise after a damaged region of the file)."""
        self._check_open()
        self._write_chunk(_TAG_BOUNDARY, BOUNDARY_UUID)

    def flush(self) -> None:
        """Hand everything written so far to the operating system (no ``fsync``).

        After a flush, a reader sees a valid file containing every sample written, lacking only the
        stream footers; this survives a crash of this process but not of the machine.
        """
        self._check_open()
        self._file.flush()

    def close(self) -> None:
        """Write a StreamFooter for every stream, flush and close the file. Calling it again does nothing.

        The file is closed even if writing the footers fails (the OSError then propagates).
        """
        if self._closed:
            return
        self._closed = True
        try:
            for stream_id, s in self._streams.items():
                first = 0.0 if s.sample_count == 0 else s.first_timestamp
                last = 0.0 if s.sample_count == 0 else s.last_timestamp
                xml = (
                    f"{_XML_DECLARATION}<info>"
                    f"<first_timestamp>{_format_number(first)}</first_timestamp>"
                    f"<last_timestamp>{_format_number(last)}</last_timestamp>"
                    f"<sample_count>{s.sample_count}</sample_count>"
                    "<clock_offsets></clock_offsets>"
                    "</info>"
                )
                self._write_chunk(_TAG_STREAM_FOOTER, struct.pack("<I", stream_id) + xml.encode("utf-8"))
            self._file.flush()
        finally:
            self._file.close()

    def __enter__(self) -> XDFWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"XDFWriter({str(self._path)!r}, {len(self._streams)} streams, {state})"

    # ------------------------------------------------------------------ helpers

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"XDF writer for {str(self._path)!r} is closed")

    def _stream(self, stream_id: int) -> _StreamState:
        try:
            return self._streams[stream_id]
        except (KeyError, TypeError):
            raise ValueError(f"unknown XDF stream id {stream_id!r}; known: {sorted(self._streams) or 'none'}") from None

    def _write_chunk(self, tag: int, content: bytes) -> None:
        self._file.write(_chunk_header(tag, len(content)) + content)

    @staticmethod
    def _pack_numeric(s: _StreamState, record_dtype: np.dtype, samples: Any, ts: np.ndarray) -> bytes:
        """Validate numeric samples and pack them (with their timestamps) into the on-disk layout."""
        x = np.asarray(samples)
        n = ts.shape[0]
        if x.dtype.kind not in "biuf":
            raise TypeError(f"stream {s.name!r}: samples must be a bool, integer or float array, got dtype {x.dtype}")
        if x.ndim != 2 or x.shape[1] != s.n_channels:
            got = f"{x.shape[1]} channels" if x.ndim == 2 else f"an array of shape {x.shape}"
            raise ValueError(
                f"stream {s.name!r} has {s.n_channels} channels; samples must have shape "
                f"(n_samples, {s.n_channels}), got {got}"
            )
        if x.shape[0] != n:
            raise ValueError(f"stream {s.name!r}: {x.shape[0]} samples but {n} timestamps")
        if n == 0:
            return b""
        value_dtype = record_dtype["values"].base
        if value_dtype.kind == "i" and x.dtype.kind in "iuf":
            info = np.iinfo(value_dtype)
            if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
                raise ValueError(f"stream {s.name!r} ({s.channel_format}): samples contain NaN or inf")
            lo, hi = x.min(), x.max()
            # Floats in (min - 1, max + 1) truncate into range. Python compares int and float exactly.
            if (x.dtype.kind == "f" and (float(lo) <= info.min - 1 or float(hi) >= info.max + 1)) or (
                x.dtype.kind != "f" and (int(lo) < info.min or int(hi) > info.max)
            ):
                raise ValueError(
                    f"stream {s.name!r} ({s.channel_format}): sample values {lo}..{hi} are outside "
                    f"{info.min}..{info.max}"
                )
        records = np.empty(n, dtype=record_dtype)
        records["ts_bytes"] = _TIMESTAMP_BYTES
        records["ts"] = ts
        with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, as in a cast
            records["values"] = x
        return records.tobytes()

    @staticmethod
    def _pack_strings(s: _StreamState, samples: Any, ts: np.ndarray) -> bytes:
        """Validate string samples and pack them (with their timestamps) into the on-disk layout."""
        if isinstance(samples, (str, bytes)):
            raise TypeError(f"stream {s.name!r}: samples must be a sequence of samples, not a single str")
        rows = list(samples)
        n = ts.shape[0]
        if len(rows) != n:
            raise ValueError(f"stream {s.name!r}: {len(rows)} samples but {n} timestamps")
        parts: list[bytes] = []
        ts_prefix = struct.pack("<B", _TIMESTAMP_BYTES)
        for i, row in enumerate(rows):
            if isinstance(row, (str, bytes)):
                raise TypeError(
                    f"stream {s.name!r}: sample {i} is a single str; each sample must be a sequence of "
                    f"{s.n_channels} str"
                )
            values = list(row)
            if len(values) != s.n_channels:
                raise ValueError(f"stream {s.name!r} has {s.n_channels} channels; sample {i} has {len(values)} values")
            parts.append(ts_prefix)
            parts.append(struct.pack("<d", ts[i]))
            for v in values:
                if not isinstance(v, str):
                    raise TypeError(
                        f"stream {s.name!r}: sample {i} holds a {type(v).__name__}; string streams take str"
                    )
                encoded = v.encode("utf-8")
                parts.append(_encode_varlen(len(encoded)))
                parts.append(encoded)
        return b"".join(parts)
