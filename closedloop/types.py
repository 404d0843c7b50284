"""Core value types shared by every part of the pipeline.

Array orientation everywhere: samples are ``(n_samples, n_channels)``; timestamps are ``(n_samples,)``
in seconds on the LSL clock (``pylsl.local_clock``, which on Linux is ``time.monotonic``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from closedloop.errors import ConfigError

__all__ = [
    "Burst",
    "Chunk",
    "ControlContext",
    "Estimate",
    "PulseCommand",
    "StreamInfo",
    "unit_to_volts",
]

# Spellings of EMG units seen in LSL stream headers and file formats, and their factor to volts.
_UNIT_TO_VOLTS = {
    "v": 1.0,
    "volt": 1.0,
    "volts": 1.0,
    "mv": 1e-3,
    "millivolt": 1e-3,
    "millivolts": 1e-3,
    "uv": 1e-6,
    "µv": 1e-6,
    "μv": 1e-6,
    "microvolt": 1e-6,
    "microvolts": 1e-6,
    "nv": 1e-9,
    "nanovolt": 1e-9,
    "nanovolts": 1e-9,
}


def unit_to_volts(unit: str) -> float:
    """Factor that converts a value in ``unit`` (e.g. ``"microvolts"``, ``"uV"``, ``"mV"``) to volts."""
    try:
        return _UNIT_TO_VOLTS[unit.strip().lower()]
    except KeyError:
        raise ConfigError(
            f"unknown voltage unit {unit!r}; allowed: V, mV, uV (microvolts), nV and their spelled-out names"
        ) from None


@dataclass(frozen=True)
class StreamInfo:
    """What a stream is: name, type, sampling rate, channels and their units.

    Parameters
    ----------
    name, type:
        Stream name and content type (``"EMG"``, ``"Force"``, ...), as in LSL.
    rate_hz:
        Nominal sampling rate in Hz; 0 for irregular streams (markers, pulses).
    channel_names:
        One label per channel.
    units:
        One unit per channel (e.g. ``"microvolts"``); the values in :class:`Chunk` samples are in these
        units. Estimators convert to microvolts with :meth:`scale_to_uv`.
    source_id:
        The LSL source_id (or a file path for replays); empty if unknown.
    """

    name: str
    type: str
    rate_hz: float
    channel_names: tuple[str, ...]
    units: tuple[str, ...]
    source_id: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_names", tuple(self.channel_names))
        units = tuple(self.units)
        if len(units) == 1 and len(self.channel_names) > 1:
            units = units * len(self.channel_names)
        object.__setattr__(self, "units", units)
        if len(self.units) != len(self.channel_names):
            raise ConfigError(
                f"stream {self.name!r}: {len(self.channel_names)} channel names but {len(self.units)} units"
            )
        if not (math.isfinite(self.rate_hz) and self.rate_hz >= 0):
            raise ConfigError(f"stream {self.name!r}: rate_hz must be a finite number >= 0, got {self.rate_hz}")

    @property
    def n_channels(self) -> int:
        """Number of channels."""
        return len(self.channel_names)

    def scale_to_uv(self) -> np.ndarray:
        """Per-channel factors converting sample values to microvolts, shape ``(n_channels,)``."""
        return np.array([unit_to_volts(u) * 1e6 for u in self.units])


@dataclass(frozen=True, eq=False)
class Chunk:
    """A block of consecutive samples of one stream.

    Attributes
    ----------
    samples:
        ``(n_samples, n_channels)`` float array in the units of ``info.units``.
    timestamps:
        ``(n_samples,)`` float64, seconds on the LSL clock (time-corrected for remote streams).
    info:
        The stream the samples belong to.
    t_arrival:
        ``time.perf_counter()`` when the chunk reached this process (None for virtual-time sources);
        used to measure decision latency.
    pulse_times:
        ``(n_pulses,)`` float64, times (s, on the clock of ``timestamps``) of the stimulation pulses
        whose sample falls in this chunk, in increasing order; empty if the source knows there were
        none, None if the source does not know (live streams). Set by replays of recordings
        (:class:`acquisition.files.FileSource`), from the file's pulse record or from detected
        artifacts.
    """

    samples: np.ndarray
    timestamps: np.ndarray
    info: StreamInfo
    t_arrival: float | None = None
    pulse_times: np.ndarray | None = None

    def __len__(self) -> int:
        return self.samples.shape[0]


@dataclass(frozen=True)
class PulseCommand:
    """One stimulation pulse.

    Attributes
    ----------
    t:
        Delivery time, seconds on the LSL clock.
    channel:
        Stimulator output channel (0-based).
    amplitude_ma:
        Current amplitude in mA (0 means no pulse).
    pulse_width_us:
        Pulse width (duration of one phase) in microseconds.
    """

    t: float
    channel: int
    amplitude_ma: float
    pulse_width_us: float

    @property
    def charge_uc(self) -> float:
        """Charge of one phase in microcoulombs (mA x us / 1000)."""
        return self.amplitude_ma * self.pulse_width_us * 1e-3


@dataclass(frozen=True, eq=False)
class Estimate:
    """What the estimators found in one interval (a pulse interval, or a fixed window without pulses).

    Per-channel arrays have shape ``(n_channels,)``; NaN where a value is not defined for the interval
    (e.g. no M-wave without a pulse). Scalars refer to the control channel.

    Attributes
    ----------
    index:
        Running number of the interval in the session.
    t_start, t_end:
        LSL times of the interval's first sample and of its last sample (s).
    amplitude_ma:
        Amplitude of the pulse that opened the interval, NaN if none.
    effort_uv:
        Volitional EMG (RMS, microvolts) of the control channel in this interval.
    effort_smooth_uv:
        ``effort_uv`` smoothed over recent intervals (the estimator's time constant).
    effort_pct_mvc:
        ``effort_smooth_uv`` relative to the calibrated MVC value in percent, NaN when not calibrated.
    mwave_ptp_uv:
        Peak-to-peak M-wave amplitude of the control channel (uV), NaN without a pulse.
    channel_effort_uv, channel_mwave_ptp_uv, channel_mwave_area_uvs, channel_mwave_latency_s:
        The same measures for every channel; area of the rectified M-wave in uV*s, latency of its
        largest deflection after the pulse in s.
    channel_effort_pct_mvc:
        ``channel_effort_uv`` relative to each channel's MVC reference (%), unsmoothed.
    channel_mwave_ptp_rel, channel_mwave_area_rel:
        M-wave peak-to-peak and area relative to the mean of the first pulses (fatigue indices;
        meaningful when the intensity is constant).
    channel_mdf_hz, channel_mnf_hz, channel_fi_nsm5:
        Median and mean frequency (Hz) and Dimitrov's spectral fatigue index FInsm5 of the volitional EMG
        over the estimator's spectral window; NaN until enough signal has accumulated.
    warnings:
        Short texts describing anything unusual (e.g. an interval too short for the M-wave window).
    has_pulse:
        True if a pulse opened this interval (its amplitude may be unknown, e.g. detected in a replay).
    """

    index: int
    t_start: float
    t_end: float
    amplitude_ma: float
    effort_uv: float
    effort_smooth_uv: float
    effort_pct_mvc: float
    mwave_ptp_uv: float
    channel_effort_uv: np.ndarray
    channel_mwave_ptp_uv: np.ndarray
    channel_mwave_area_uvs: np.ndarray
    channel_mwave_latency_s: np.ndarray
    channel_effort_pct_mvc: np.ndarray
    channel_mwave_ptp_rel: np.ndarray
    channel_mwave_area_rel: np.ndarray
    channel_mdf_hz: np.ndarray
    channel_mnf_hz: np.ndarray
    channel_fi_nsm5: np.ndarray
    warnings: tuple[str, ...] = field(default=())
    has_pulse: bool = False


@dataclass(frozen=True, slots=True)
class ControlContext:
    """What a controller may know besides the :class:`Estimate`, given by the orchestrator per decision.

    Attributes
    ----------
    t_s:
        Time of the pulse being decided, in seconds from the current phase's first decision (s): 0 at that
        decision, then steps of ``period_s``. Live, the data's decision grid is offset from the phase's nominal
        start by up to one period; counting from the first decision keeps a time-scheduled controller's slots
        on the grid whatever that offset.
    period_s:
        The session's pulse period, ``1 / stim_hz`` (s): one decision per period.
    phase:
        Name of the current phase.
    force_n:
        Latest measured force (N), mean of the newest chunk of the session's force stream; NaN when the
        session has no force stream.
    """

    t_s: float
    period_s: float
    phase: str = ""
    force_n: float = math.nan


@dataclass(frozen=True)
class Burst:
    """Several pulses from one decision, e.g. a doublet for twitch interpolation.

    ``amplitudes_ma[i]`` (mA) is delivered ``i * interval_s`` after the first pulse. Every pulse passes the
    safety layer on its own (rate, ramp and charge limits apply to each).
    """

    amplitudes_ma: tuple[float, ...]
    interval_s: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "amplitudes_ma", tuple(float(a) for a in self.amplitudes_ma))
        if not self.amplitudes_ma:
            raise ConfigError("a Burst needs at least one amplitude")
        if not (math.isfinite(self.interval_s) and self.interval_s > 0):
            raise ConfigError(f"Burst interval_s = {self.interval_s!r}: must be a positive number of seconds")
