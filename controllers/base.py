"""The controller protocol."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from closedloop.types import Burst, ControlContext, Estimate

__all__ = ["Controller", "Output"]

#: What a controller returns: the amplitude of the next pulse in mA (0: no pulse), or a :class:`Burst`.
Output = float | Burst


@runtime_checkable
class Controller(Protocol):
    """A pure per-pulse controller: (estimate, context, its own state, its parameters) -> next pulse.

    ``step`` is called once per pulse period during a control phase with the newest :class:`Estimate` and a
    :class:`ControlContext` (time in the phase, pulse period, phase name, measured force). It returns the
    amplitude of the next pulse in mA (0 means no pulse) or a :class:`Burst` of pulses (e.g. a doublet).
    It never touches hardware, the clock or I/O: the orchestrator times the pulse and the safety layer
    bounds it, so a controller can bypass neither. ``reset`` returns it to its initial state; the
    orchestrator calls it when a phase that uses the controller begins.
    """

    def step(self, estimate: Estimate, ctx: ControlContext) -> Output: ...

    def reset(self) -> None: ...
