"""Drivers for real stimulators, behind the :class:`~closedloop.safety.Stimulator` protocol.

Each driver accepts only :class:`~closedloop.safety.SafePulse` objects and imports its optional dependencies
(e.g. pyserial) only when it is opened, so importing this package never needs them.

- :class:`~closedloop.drivers.sciencemode.ScienceModeStimulator`: Hasomed RehaStim 2 over ScienceMode 2
  (serial port; ``pip install 'closedloop[sciencemode]'``).
"""

from __future__ import annotations

from closedloop.drivers.sciencemode import ScienceModeStimulator

__all__ = ["ScienceModeStimulator"]
