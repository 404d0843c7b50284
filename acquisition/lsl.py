"""Lab Streaming Layer edges: :class:`LSLSource` (an inlet as a Source) and :class:`LSLPublisher` (outlets).

pylsl is imported through :func:`closedloop.lslconfig.import_pylsl`, so a missing liblsl becomes one clear
error. Call :func:`closedloop.lslconfig.use_loopback` before the first import when LSL must stay on this
machine (tests, the demo, the simulator).

Timing design (measured on this machine, see DESIGN.md): a dedicated reader thread blocks in
``pull_chunk(min_samples=1)`` into a preallocated numpy buffer and hands each chunk to the event loop
with ``call_soon_threadsafe``; nothing polls with sleeps.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from closedloop.errors import ConfigError, SourceError, StreamLost, StreamMismatch, StreamNotFound
from closedloop.lslconfig import import_pylsl
from closedloop.types import Chunk, StreamInfo

__all__ = ["LSLPublisher", "LSLSource", "StreamDescription", "list_streams"]


@dataclass(frozen=True)
class StreamDescription:
    """A visible LSL stream, as listed by :func:`list_streams`."""

    name: str
    type: str
    source_id: str
    n_channels: int
    rate_hz: float
    channel_format: str
    hostname: str

    def __str__(self) -> str:
        return (
            f"{self.name!r} (type {self.type!r}, source_id {self.source_id!r}, {self.n_channels} ch, "
            f"{self.rate_hz:g} Hz, {self.channel_format}, host {self.hostname})"
        )


_FORMATS = {1: "float32", 2: "double64", 3: "string", 4: "int32", 5: "int16", 6: "int8", 7: "int64"}
_NUMPY = {1: np.float32, 2: np.float64, 4: np.int32, 5: np.int16, 6: np.int8, 7: np.int64}


def _describe(info) -> StreamDescription:
    return StreamDescription(
        name=info.name(),
        type=info.type(),
        source_id=info.source_id(),
        n_channels=info.channel_count(),
        rate_hz=info.nominal_srate(),
        channel_format=_FORMATS.get(info.channel_format(), str(info.channel_format())),
        hostname=info.hostname(),
    )


def list_streams(wait_time_s: float = 1.0) -> list[StreamDescription]:
    """All LSL streams visible within ``wait_time_s`` seconds."""
    pylsl = import_pylsl()
    return [_describe(i) for i in pylsl.resolve_streams(wait_time=wait_time_s)]


def _query(name: str | None, type: str | None, source_id: str | None) -> str:
    parts = [f"{key}='{val}'" for key, val in (("name", name), ("type", type), ("source_id", source_id)) if val]
    return " and ".join(parts)


def _channels_from_desc(info, default_unit: str) -> tuple[list[str], list[str]]:
    """Channel labels and units from the stream header (desc/channels/channel), with fallbacks."""
    n = info.channel_count()
    labels, units = [], []
    ch = info.desc().child("channels").child("channel")
    while not ch.empty() and len(labels) < n:
        labels.append(ch.child_value("label") or f"ch{len(labels) + 1}")
        units.append(ch.child_value("unit") or default_unit)
        ch = ch.next_sibling("channel")
    labels += [f"ch{i + 1}" for i in range(len(labels), n)]
    units += [default_unit] * (n - len(units))
    return labels, units


class LSLSource:
    """A live LSL stream as a :class:`~acquisition.base.Source`.

    Parameters
    ----------
    name, type, source_id:
        What to look for; at least one is required. All given must match.
    resolve_timeout_s:
        How long to look for the stream (s).
    stall_timeout_s:
        A stream that delivers no sample for this long raises :class:`StreamLost` (s).
    expected_channels, expected_rate_hz:
        If given, a stream with another channel count or nominal rate is refused with
        :class:`StreamMismatch` before any sample is used.
    default_unit:
        Unit assumed for channels whose header gives none (EMG amplifiers on LSL mostly send microvolts).
    max_chunk:
        Largest chunk handed on at once (samples).
    """

    def __init__(
        self,
        name: str | None = None,
        type: str | None = None,
        source_id: str | None = None,
        *,
        resolve_timeout_s: float = 5.0,
        stall_timeout_s: float = 1.0,
        expected_channels: int | None = None,
        expected_rate_hz: float | None = None,
        default_unit: str = "microvolts",
        max_chunk: int = 1024,
    ) -> None:
        if not (name or type or source_id):
            raise ConfigError("LSLSource needs at least one of name, type or source_id to look for")
        if stall_timeout_s <= 0 or resolve_timeout_s <= 0:
            raise ConfigError("LSLSource: stall_timeout_s and resolve_timeout_s must be > 0")
        self.query = _query(name, type, source_id)
        self.resolve_timeout_s = resolve_timeout_s
        self.stall_timeout_s = stall_timeout_s
        self.expected_channels = expected_channels
        self.expected_rate_hz = expected_rate_hz
        self.default_unit = default_unit
        self.max_chunk = max_chunk
        self._pylsl = import_pylsl()
        self.clock: Callable[[], float] = self._pylsl.local_clock
        self._info: StreamInfo | None = None
        self._inlet = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._pending: deque = deque()
        self._waiter: asyncio.Future | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Samples received so far.
        self.n_received = 0

    @property
    def info(self) -> StreamInfo:
        if self._info is None:
            raise SourceError(f"LSL stream {self.query} is not open; use 'async with source:'")
        return self._info

    # -- opening ---------------------------------------------------------------------------------
    def _resolve(self):
        pylsl = self._pylsl
        found = pylsl.resolve_bypred(self.query, 1, self.resolve_timeout_s)
        if not found:
            visible = list_streams(0.5)
            listing = "; ".join(str(s) for s in visible) if visible else "none"
            raise StreamNotFound(
                f"no LSL stream with {self.query} found within {self.resolve_timeout_s:g} s. Visible streams: {listing}"
            )
        if len({i.uid() for i in found}) > 1:
            listing = "; ".join(str(_describe(i)) for i in found)
            raise StreamNotFound(
                f"{len(found)} LSL streams match {self.query}: {listing}. Give a source_id to choose one"
            )
        return found[0]

    def _open(self) -> None:
        pylsl = self._pylsl
        found = self._resolve()
        desc = _describe(found)
        if self.expected_channels is not None and desc.n_channels != self.expected_channels:
            raise StreamMismatch(
                f"LSL stream {desc.name!r} has {desc.n_channels} channels but {self.expected_channels} are "
                "configured; set the channel count to match the amplifier or pick another stream"
            )
        if self.expected_rate_hz is not None and abs(desc.rate_hz - self.expected_rate_hz) > 1e-6 * max(
            1.0, self.expected_rate_hz
        ):
            raise StreamMismatch(
                f"LSL stream {desc.name!r} runs at {desc.rate_hz:g} Hz but {self.expected_rate_hz:g} Hz is "
                "configured; set the rate to match the amplifier"
            )
        if found.channel_format() not in _NUMPY:
            raise StreamMismatch(f"LSL stream {desc.name!r} carries {desc.channel_format} values, not numbers")
        flags = pylsl.proc_clocksync | pylsl.proc_monotonize
        try:
            inlet = pylsl.StreamInlet(found, max_buflen=60, recover=False, processing_flags=flags)
            inlet.open_stream(timeout=self.resolve_timeout_s)
            full = inlet.info(timeout=self.resolve_timeout_s)
            # The first clock-offset estimate takes ~0.6 s; get it now, or the first pull would block that
            # long mid-session (later estimates are refreshed in the background without blocking).
            inlet.time_correction(timeout=self.resolve_timeout_s)
        except pylsl.util.LostError as exc:
            raise StreamLost(f"LSL stream {desc.name!r} disappeared while connecting") from exc
        except pylsl.util.TimeoutError as exc:
            raise StreamNotFound(f"LSL stream {desc.name!r} found but could not be opened: {exc}") from exc
        labels, units = _channels_from_desc(full, self.default_unit)
        self._info = StreamInfo(
            name=desc.name,
            type=desc.type,
            rate_hz=desc.rate_hz,
            channel_names=tuple(labels),
            units=tuple(units),
            source_id=desc.source_id,
        )
        self._inlet = inlet
        self._dtype = _NUMPY[found.channel_format()]

    async def __aenter__(self) -> LSLSource:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._open)
        self._stop.clear()
        self._thread = threading.Thread(target=self._reader, name=f"lsl-reader[{self.info.name}]", daemon=True)
        self._thread.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the reader thread and close the inlet; idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        if self._inlet is not None:
            try:
                self._inlet.close_stream()
            except Exception:  # closing a lost stream may raise; nothing to recover
                pass
            self._inlet = None

    # -- reading ---------------------------------------------------------------------------------
    def _reader(self) -> None:
        pylsl = self._pylsl
        info = self.info
        buf = np.empty((self.max_chunk, info.n_channels), dtype=self._dtype)
        loop = self._loop
        assert loop is not None
        try:
            while not self._stop.is_set():
                view, ts = self._inlet.pull_chunk(
                    timeout=0.1, max_samples=self.max_chunk, dest_obj=buf, min_samples=1, as_numpy=True
                )
                if len(ts) == 0:
                    continue
                t_arrival = time.perf_counter()
                chunk = Chunk(samples=view.copy(), timestamps=np.asarray(ts), info=info, t_arrival=t_arrival)
                loop.call_soon_threadsafe(self._deliver, chunk)
        except pylsl.util.LostError as exc:
            err = StreamLost(f"LSL stream {info.name!r} (source_id {info.source_id!r}) was lost: its outlet is gone")
            err.__cause__ = exc
            self._deliver_threadsafe(loop, err)
        except Exception as exc:  # anything else must surface in the pipeline, never die silently
            err = SourceError(f"LSL reader for {info.name!r} failed: {exc!r}")
            err.__cause__ = exc
            self._deliver_threadsafe(loop, err)

    def _deliver_threadsafe(self, loop: asyncio.AbstractEventLoop, item: object) -> None:
        try:
            loop.call_soon_threadsafe(self._deliver, item)
        except RuntimeError:  # loop already closed: nobody is listening any more
            pass

    def _deliver(self, item: object) -> None:
        self._pending.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> LSLSource:
        return self

    async def __anext__(self) -> Chunk:
        if not self._pending:
            loop = asyncio.get_running_loop()
            waiter = loop.create_future()
            self._waiter = waiter
            handle = loop.call_later(self.stall_timeout_s, _expire, waiter)
            try:
                await waiter
            finally:
                handle.cancel()
                self._waiter = None
            if not self._pending:
                raise StreamLost(
                    f"LSL stream {self.info.name!r} (source_id {self.info.source_id!r}) delivered no samples for "
                    f"{self.stall_timeout_s:g} s (stall timeout)"
                )
        item = self._pending.popleft()
        if isinstance(item, BaseException):
            raise item
        self.n_received += len(item)
        return item


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


class LSLPublisher:
    """An LSL outlet for a numeric stream described by a :class:`StreamInfo`.

    Channel labels and units go into the header (desc/channels/channel/label, unit, type), where
    :class:`LSLSource` and LabRecorder read them.

    Parameters
    ----------
    info:
        What to publish; ``rate_hz`` 0 makes an irregular stream.
    channel_format:
        ``"float32"`` or ``"double64"``.
    chunk_size:
        Preferred chunk size hint for consumers (samples); 0 lets LSL decide.
    """

    def __init__(self, info: StreamInfo, channel_format: str = "float32", chunk_size: int = 0) -> None:
        pylsl = import_pylsl()
        fmt = {"float32": pylsl.cf_float32, "double64": pylsl.cf_double64}.get(channel_format)
        if fmt is None:
            raise ConfigError(f"LSLPublisher: channel_format {channel_format!r} not allowed; use float32 or double64")
        self._pylsl = pylsl
        self.info = info
        lsl_info = pylsl.StreamInfo(
            info.name, info.type, info.n_channels, info.rate_hz, fmt, info.source_id or info.name
        )
        chans = lsl_info.desc().append_child("channels")
        for label, unit in zip(info.channel_names, info.units, strict=True):
            ch = chans.append_child("channel")
            ch.append_child_value("label", label)
            ch.append_child_value("unit", unit)
            ch.append_child_value("type", info.type)
        lsl_info.desc().append_child("acquisition").append_child_value("manufacturer", "closedloop")
        self._outlet = pylsl.StreamOutlet(lsl_info, chunk_size, 360)

    def push(self, samples: np.ndarray, timestamp: float = 0.0) -> None:
        """Push ``(n, n_channels)`` samples; ``timestamp`` is the LSL time of the last one (0: now)."""
        self._outlet.push_chunk(samples, timestamp)

    def push_sample(self, values: Sequence[float], timestamp: float = 0.0) -> None:
        """Push one sample with its LSL time (0: now)."""
        self._outlet.push_sample(values, timestamp)

    def have_consumers(self) -> bool:
        """True if at least one inlet is connected."""
        return bool(self._outlet.have_consumers())

    def wait_for_consumers(self, timeout_s: float) -> bool:
        """Block up to ``timeout_s`` seconds for a consumer; True if one connected."""
        return bool(self._outlet.wait_for_consumers(timeout_s))

    def close(self) -> None:
        """Destroy the outlet (consumers see the stream disappear)."""
        self._outlet = None
