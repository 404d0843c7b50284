"""The exception tree of closedloop.

Every error a user can cause (a bad configuration, a stream that is not there, a stream that stops)
is a :class:`ClosedLoopError`; the CLI prints those as one line, without a traceback. Library exceptions
(pylsl, scipy, OS errors) are translated at the boundary with ``raise ... from exc``.

    ClosedLoopError
    +-- ConfigError          a configuration value is invalid (names the key, the value, what is allowed)
    +-- SourceError          a data source cannot deliver what was asked
    |   +-- StreamNotFound   no stream matches the query (lists what exists)
    |   +-- StreamLost       a stream stopped delivering samples (stall timeout) or disappeared
    |   +-- StreamMismatch   a stream's channel count, rate or units differ from the configured ones
    |   +-- BadSamples       NaN/inf or otherwise invalid samples arrived
    +-- SafetyError          the safety layer stopped output (the reason is in the message)
    +-- StimulatorError      a stimulator driver failed
    +-- LSLUnavailable       the liblsl binary library cannot be loaded (the message gives the fix)
"""

from __future__ import annotations

__all__ = [
    "BadSamples",
    "ClosedLoopError",
    "ConfigError",
    "LSLUnavailable",
    "SafetyError",
    "SourceError",
    "StimulatorError",
    "StreamLost",
    "StreamMismatch",
    "StreamNotFound",
]


class ClosedLoopError(Exception):
    """Base class of every error closedloop raises on purpose."""


class ConfigError(ClosedLoopError, ValueError):
    """An invalid configuration value."""


class SourceError(ClosedLoopError):
    """A data source cannot deliver what was asked."""


class StreamNotFound(SourceError):
    """No stream matches the query."""


class StreamLost(SourceError):
    """A stream stopped delivering samples, or its outlet disappeared."""


class StreamMismatch(SourceError):
    """A stream's channel count, sampling rate or units differ from the configured ones."""


class BadSamples(SourceError):
    """Samples that cannot be used (NaN, inf)."""


class SafetyError(ClosedLoopError):
    """The safety layer stopped stimulation output."""


class StimulatorError(ClosedLoopError):
    """A stimulator driver failed."""


class LSLUnavailable(ClosedLoopError):
    """The liblsl binary library cannot be loaded."""
