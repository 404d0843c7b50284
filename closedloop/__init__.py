"""closedloop: closed-loop electrical muscle stimulation research framework.

EMG arrives over Lab Streaming Layer (or from a file, or from the simulated participant); estimators
measure M-waves and volitional effort between stimulation pulses; a controller proposes the intensity of
every next pulse; the safety layer bounds it; a stimulator driver delivers it; everything is recorded.
"""

from closedloop.errors import (
    BadSamples,
    ClosedLoopError,
    ConfigError,
    SafetyError,
    SourceError,
    StimulatorError,
    StreamLost,
    StreamMismatch,
    StreamNotFound,
)
from closedloop.types import Chunk, Estimate, PulseCommand, StreamInfo

__version__ = "0.1.0"

__all__ = [
    "BadSamples",
    "Chunk",
    "ClosedLoopError",
    "ConfigError",
    "Estimate",
    "PulseCommand",
    "SafetyError",
    "SourceError",
    "StimulatorError",
    "StreamInfo",
    "StreamLost",
    "StreamMismatch",
    "StreamNotFound",
    "__version__",
]
