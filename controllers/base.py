"""The controller protocol."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from closedloop.types import Estimate

__all__ = ["Controller"]


@runtime_checkable
class Controller(Protocol):
    """A pure per-pulse controller: (estimate, its own state, its parameters) -> next pulse amplitude.

    ``step`` returns the amplitude of the next pulse in mA (0 means no pulse). It never touches hardware
    or time: the orchestrator times the pulse and the safety layer bounds it, so a controller cannot
    bypass either. ``reset`` returns the controller to its initial state.
    """

    def step(self, estimate: Estimate) -> float: ...

    def reset(self) -> None: ...
