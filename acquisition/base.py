"""The one Source protocol every EMG source implements."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Protocol, runtime_checkable

from closedloop.types import Chunk, StreamInfo

__all__ = ["Source"]


@runtime_checkable
class Source(Protocol):
    """An async iterator of :class:`~closedloop.types.Chunk` objects.

    Usage::

        async with source:
            print(source.info)
            async for chunk in source:
                ...

    ``info`` is valid after ``__aenter__`` (for live streams it comes from the resolved stream). Iteration
    ends when the source is exhausted (end of file, end of a bounded simulation); a live stream that stops
    delivering raises :class:`~closedloop.errors.StreamLost`. ``clock`` returns the current time on the
    clock of the chunk timestamps (the LSL clock for live streams, simulated time for virtual sources), so
    the orchestrator can time-stamp pulses on the same clock.
    """

    @property
    def info(self) -> StreamInfo: ...

    clock: Callable[[], float]

    async def __aenter__(self) -> Source: ...

    async def __aexit__(self, *exc: object) -> None: ...

    def __aiter__(self) -> AsyncIterator[Chunk]: ...
