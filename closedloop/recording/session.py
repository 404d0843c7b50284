"""The session recorder: session.xdf and estimates.csv, written incrementally by a writer thread.

The pipeline only enqueues (``push``, ``push_estimate``: a few microseconds, never blocking on the disk);
a dedicated thread owns the files and writes as data comes. A write failure (disk full, permission)
surfaces as :class:`RecordingError` at the next ``push`` so the orchestrator can turn output off.
The estimates.csv rows of all the intervals handed over together are formatted in one vectorised step, byte
for byte as ``%`` formatting would write them: rounded with numpy and laid out by a compiled kernel in fast
replays (:mod:`closedloop.recording.csvkernel`), else formatted column by column with numpy
(:mod:`closedloop.recording.numtext`).
"""

from __future__ import annotations

import math
import operator
import queue
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from closedloop.errors import ClosedLoopError
from closedloop.recording import csvkernel, numtext
from closedloop.recording.xdf import XDFWriter
from closedloop.types import Estimate, StreamInfo

__all__ = ["ESTIMATES_CSV_COLUMNS", "RecordingError", "SessionRecorder"]

#: Columns of estimates.csv, one row per channel per interval (see the README).
ESTIMATES_CSV_COLUMNS = (
    "t_s",
    "interval",
    "channel",
    "amplitude_ma",
    "mwave_ptp_uv",
    "mwave_area_uvs",
    "mwave_latency_ms",
    "mwave_ptp_rel",
    "mwave_area_rel",
    "effort_uv",
    "effort_pct_mvc",
    "mdf_hz",
    "mnf_hz",
    "fi_nsm5",
)


class RecordingError(ClosedLoopError):
    """The recorder could not write the session files."""


def _csv_text(name: str) -> str:
    """A channel name as a CSV field (quoted if it holds a comma, quote or line end)."""
    if any(c in name for c in ',"\n'):
        name = '"' + name.replace('"', '""') + '"'
    return name


def _empty_nonfinite(text: str) -> str:
    """estimates.csv leaves NaN and inf cells empty: ``text`` is a row's number cells, each after a comma (not its
    channel name, which may well begin with 'inf' or 'nan')."""
    return text.replace(",nan", ",").replace(",inf", ",").replace(",-inf", ",")


def _concatenated(items: list[tuple]) -> tuple[object, np.ndarray]:
    """The samples and timestamps of several pushes to one stream, in order, as one push."""
    if len(items) == 1:
        return items[0][1], items[0][2]
    ts = np.concatenate([np.asarray(it[2], dtype=np.float64).reshape(-1) for it in items])
    if all(isinstance(it[1], np.ndarray) for it in items):
        return np.concatenate([it[1] for it in items]), ts
    return [row for it in items for row in it[1]], ts  # string samples: lists of rows


#: The ``%.6g`` columns of estimates.csv after t_s, interval, channel (amplitude_ma first), and the ``%.6e`` one.
_G_COLUMNS = (
    "channel_mwave_ptp_uv",
    "channel_mwave_area_uvs",
    "channel_mwave_latency_s",
    "channel_mwave_ptp_rel",
    "channel_mwave_area_rel",
    "channel_effort_uv",
    "channel_effort_pct_mvc",
    "channel_mdf_hz",
    "channel_mnf_hz",
)


#: An interval's numbers of estimates.csv after the amplitude: the ``%.6g`` columns, then the ``%.6e`` one.
_CSV_NUMBERS = operator.attrgetter(*_G_COLUMNS, "channel_fi_nsm5")
_LATENCY = _G_COLUMNS.index("channel_mwave_latency_s")


def _csv_columns(ests: list[Estimate], n_channels: int) -> tuple[np.ndarray, np.ndarray]:
    """The amplitude of each interval ``(n_intervals,)`` and the other numbers of estimates.csv
    ``(n_intervals, 10, n_channels)``: the ``%.6g`` columns of :data:`_G_COLUMNS`, then fi_nsm5 (``%.6e``)."""
    numbers = list(map(_CSV_NUMBERS, ests))
    x = np.array(numbers, dtype=np.float64)
    if x.shape != (len(ests), len(_G_COLUMNS) + 1, n_channels):
        raise ValueError(f"estimates of {n_channels} channels expected, got arrays making {x.shape}")
    # ms, as each interval's row says (est.channel_mwave_latency_s * 1e3): the same product where it is float64
    with np.errstate(over="ignore"):  # a latency beyond 1.8e305 s is inf in ms: an empty cell
        if all(type(v[_LATENCY]) is np.ndarray and v[_LATENCY].dtype == np.float64 for v in numbers):
            x[:, _LATENCY] *= 1e3
        else:
            x[:, _LATENCY] = [est.channel_mwave_latency_s * 1e3 for est in ests]
    return np.array([est.amplitude_ma for est in ests], dtype=np.float64), x


class SessionRecorder:
    """Writes the streams of a session to ``out_dir/session.xdf`` and the estimates to ``estimates.csv``.

    Parameters
    ----------
    out_dir:
        Directory for the files (created if missing).
    flush_interval_s:
        The writer flushes to the OS at least this often (s), so a crash loses at most this much.
    t_zero:
        Time subtracted from ``t_s`` in estimates.csv (0: LSL clock, as for live sessions).
    threaded:
        Write from a thread of its own (live sessions: the pulse loop never waits for the disk), or in the
        caller's thread (replays as fast as possible: no thread handing over the GIL for every item).
    compiled:
        Lay out the estimates.csv rows with the compiled kernel (:mod:`closedloop.recording.csvkernel`) where
        numba is there: the same bytes in about a third of the time, but starting numba takes about a second
        (at :meth:`start`). None: when not ``threaded`` (fast replays, which start numba anyway).
    """

    #: Batches of fewer rows are formatted row by row on the numpy path (the same bytes; fewer instructions).
    _by_row_below = 96

    def __init__(
        self,
        out_dir: str | Path,
        flush_interval_s: float = 0.5,
        t_zero: float = 0.0,
        threaded: bool = True,
        compiled: bool | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise RecordingError(
                f"{self.out_dir}: cannot be the session's folder: a file of that name exists"
            ) from None
        except OSError as exc:
            raise RecordingError(f"{self.out_dir}: cannot create the session's folder: {exc.strerror or exc}") from None
        self.xdf_path = self.out_dir / "session.xdf"
        self.csv_path = self.out_dir / "estimates.csv"
        self.flush_interval_s = flush_interval_s
        self.t_zero = t_zero
        self._streams: dict[str, tuple[StreamInfo, str, dict | None]] = {}
        self._ids: dict[str, int] = {}
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._batch: list[tuple] = []  # pushed, not yet handed to the writer thread (see hand_over)
        self._batch_lock = threading.Lock()  # safety events may be pushed from a watchdog thread
        self._thread: threading.Thread | None = None
        self._csv_channels: tuple[str, ...] = ()
        self._row_formats: list[str] | None = None
        self._name_field: np.ndarray | None = None
        self._compiled = (not threaded) if compiled is None else compiled
        self._row_writer: csvkernel.RowWriter | None = None
        self.error: BaseException | None = None
        self._closed = False
        self.threaded = threaded
        self._started = False
        self._last_flush = time.monotonic()

    def add_stream(self, key: str, info: StreamInfo, channel_format: str = "float32", desc: dict | None = None) -> None:
        """Declare a stream (before :meth:`start`); ``key`` is how :meth:`push` refers to it."""
        if self._started:
            raise RecordingError("add_stream() after start()")
        self._streams[key] = (info, channel_format, desc)

    @property
    def started(self) -> bool:
        return self._started

    @property
    def closed(self) -> bool:
        return self._closed

    def set_estimate_channels(self, channel_names: tuple[str, ...]) -> None:
        """Enable estimates.csv with one row per channel per interval."""
        self._csv_channels = tuple(channel_names)
        self._name_field = self._row_writer = None

    def start(self) -> None:
        """Open the files, write the headers and start the writer thread."""
        try:
            self._writer = XDFWriter(self.xdf_path)
            for key, (info, fmt, desc) in self._streams.items():
                self._ids[key] = self._writer.add_stream(
                    info.name,
                    info.type,
                    info.channel_names,
                    info.units,
                    info.rate_hz,
                    fmt,
                    source_id=info.source_id,
                    desc=desc,
                )
            self._writer.flush()
            self._csv = None
            if self._csv_channels:
                # bytes, as the rows are formatted (UTF-8, no newline translation): no decoding and re-encoding
                self._csv = open(self.csv_path, "wb")
                self._csv.write((",".join(ESTIMATES_CSV_COLUMNS) + "\n").encode("utf-8"))
                self._compiled_rows()  # numba's start, if this recorder uses it, before any data
        except OSError as exc:
            raise RecordingError(f"cannot create the session files in {self.out_dir}: {exc}") from exc
        self._started = True
        if self.threaded:
            self._thread = threading.Thread(target=self._run, name="session-recorder", daemon=True)
            self._thread.start()

    # -- producer side (called from the event loop) ---------------------------------------------
    def push(self, key: str, samples: np.ndarray, timestamps: np.ndarray) -> None:
        """Enqueue samples of stream ``key``; raises :class:`RecordingError` if the writer failed."""
        if self.error is not None:
            raise RecordingError(f"recording to {self.xdf_path} failed: {self.error}") from self.error
        self._put((self._ids[key], samples, timestamps))

    def push_estimate(self, est: Estimate) -> None:
        """Enqueue the estimates.csv rows of one interval."""
        if self._csv_channels:
            self._put(("csv", est))

    def push_estimates(self, ests: Sequence[Estimate]) -> None:
        """Enqueue the estimates.csv rows of several intervals, in order (as :meth:`push_estimate` on each)."""
        if self._csv_channels:
            self._put(*[("csv", est) for est in ests])

    def _put(self, *items: tuple) -> None:
        with self._batch_lock:
            self._batch.extend(items)
            full = len(self._batch) >= 256
        if full:
            self.hand_over()

    def hand_over(self) -> None:
        """Give the items pushed since the last call to the writer thread (threaded mode), or write them now.

        The orchestrator calls this after a chunk's decisions: the writer thread then formats and writes
        while the loop waits for the next chunk, instead of competing for the GIL while a pulse is decided.
        Either way the estimates.csv rows of the batch are formatted together.
        """
        with self._batch_lock:
            batch, self._batch = self._batch, []
        if not batch:
            return
        if self.threaded:
            self._q.put(batch)
            return
        try:
            self._write(batch)
        except OSError as exc:
            self.error = exc
            raise RecordingError(f"recording to {self.xdf_path} failed: {exc}") from exc

    # -- writer thread -------------------------------------------------------------------------------
    def _compiled_rows(self) -> csvkernel.RowWriter | None:
        """The compiled row writer where this recorder uses one (see ``compiled``), made on first use."""
        if self._row_writer is None and self._compiled:
            kernel = csvkernel.load()
            if kernel is None:
                self._compiled = False
            else:
                names = [_csv_text(name).encode("utf-8") for name in self._csv_channels]
                self._row_writer = csvkernel.RowWriter(kernel, names)
        return self._row_writer

    def _rows(self, ests: list[Estimate]) -> bytes | memoryview:
        """The CSV rows of intervals ``ests`` in UTF-8, as :meth:`_rows_by_row` writes them: laid out by the
        compiled kernel where this recorder uses it (a view of its buffer, valid until the next call), else
        formatted column by column with numpy."""
        names = self._csv_channels
        if not ests:
            return b""
        writer = self._compiled_rows()
        # numpy: a NUL is the vectorised formatter's filler byte; below ~100 rows (a live session's batch of one
        # or two intervals) its fixed cost (~40 numpy calls) exceeds one % formatting per row
        if writer is None and (len(ests) * len(names) < self._by_row_below or any("\0" in name for name in names)):
            with np.errstate(over="ignore"):  # as below, a latency beyond 1.8e305 s is inf in ms
                return "".join(self._rows_by_row(est) for est in ests).encode("utf-8")
        amp, x = _csv_columns(ests, len(names))
        heads = [b"%.6f,%d," % (est.t_start - self.t_zero, est.index) for est in ests]
        if writer is not None:
            tails = [b",%.6g" % a if math.isfinite(a) else b"," for a in amp.tolist()]
            return writer.rows(heads, tails, x, len(_G_COLUMNS))
        if self._name_field is None:
            self._name_field = numtext.text_field([_csv_text(name) for name in names])
        n_ch, n_iv, n_g = len(names), len(ests), len(_G_COLUMNS)
        n = n_ch * n_iv
        comma, end = numtext.constant_field(",", n), numtext.constant_field("\n", n)
        fields = [np.repeat(numtext.text_field([h.decode() for h in heads]), n_ch, axis=1)]
        fields += [np.tile(self._name_field, n_iv), comma]
        if np.isfinite(amp).any():
            fields.append(np.repeat(numtext.format_g(amp), n_ch, axis=1))
        # columns without a finite number (e.g. % MVC without calibration) are empty cells: no formatting
        filled = np.flatnonzero(np.isfinite(x[:, :n_g]).any(axis=(0, 2)))
        g_text = numtext.format_g(x[:, filled].transpose(1, 0, 2))  # column after column, interval after interval
        at = {c: k for k, c in enumerate(filled)}
        for c in range(n_g):
            fields.append(comma)
            if c in at:
                fields.append(g_text[:, at[c] * n : (at[c] + 1) * n])
        fields += [comma, numtext.format_e(x[:, n_g]), end]
        return numtext.join_fields(fields)

    def _rows_by_row(self, est: Estimate) -> str:
        """The CSV rows of one interval: one ``%`` formatting per row (NaN becomes an empty cell)."""
        if self._row_formats is None:
            self._row_formats = [f"%.6f,%d,{_csv_text(name).replace('%', '%%')}" for name in self._csv_channels]
        t = est.t_start - self.t_zero
        table = np.column_stack(
            (
                np.full(len(self._csv_channels), est.amplitude_ma),
                est.channel_mwave_ptp_uv,
                est.channel_mwave_area_uvs,
                est.channel_mwave_latency_s * 1e3,
                est.channel_mwave_ptp_rel,
                est.channel_mwave_area_rel,
                est.channel_effort_uv,
                est.channel_effort_pct_mvc,
                est.channel_mdf_hz,
                est.channel_mnf_hz,
                est.channel_fi_nsm5,
            )
        ).tolist()
        cells = ",%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6e\n"
        return "".join(
            head % (t, est.index) + _empty_nonfinite(cells % tuple(row))
            for head, row in zip(self._row_formats, table, strict=True)
        )

    def _write(self, batch: list[tuple]) -> None:
        """Write a handed-over batch: one Samples chunk per stream, the estimates.csv rows together."""
        ests = []
        streams: dict[int, list[tuple]] = {}
        for it in batch:
            if it[0] == "csv":
                ests.append(it[1])
            else:
                streams.setdefault(it[0], []).append(it)
        for stream_id, items in streams.items():
            self._writer.write_samples(stream_id, *_concatenated(items))
        if ests:
            self._csv.write(self._rows(ests))
        if time.monotonic() - self._last_flush >= self.flush_interval_s:
            self._flush()

    def _flush(self) -> None:
        self._writer.flush()
        if self._csv is not None:
            self._csv.flush()
        self._last_flush = time.monotonic()

    def _run(self) -> None:
        try:
            while True:
                try:
                    batch = self._q.get(timeout=self.flush_interval_s)
                except queue.Empty:
                    self._flush()
                    continue
                if batch is None:
                    break
                self._write(batch)
        except BaseException as exc:  # surfaces at the next push(); the orchestrator turns output off
            self.error = exc

    def close(self) -> None:
        """Write everything still queued, the stream footers, and close the files; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self.hand_over()
            self._q.put(None)
            self._thread.join()
        try:
            if self._started and not self.threaded:
                with self._batch_lock:
                    batch, self._batch = self._batch, []
                if batch and self.error is None:
                    self._write(batch)
            if hasattr(self, "_writer"):
                self._writer.close()
            if getattr(self, "_csv", None) is not None:
                self._csv.close()
        except OSError as exc:
            raise RecordingError(f"cannot finish the session files in {self.out_dir}: {exc}") from exc
        if self.error is not None:
            raise RecordingError(f"recording to {self.xdf_path} failed: {self.error}") from self.error
