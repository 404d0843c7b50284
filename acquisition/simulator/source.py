"""The simulated participant in-process: a Source of EMG plus recorded Force and GroundTruth sources.

For tests and offline studies the muscle runs in *virtual time* (``realtime=False``): chunks come as fast
as the pipeline takes them and ``clock()`` is the simulation time, so a 60-s session takes a fraction of a
second and is exactly reproducible. With ``realtime=True`` chunks are paced to the wall clock.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

import numpy as np

from acquisition.simulator.muscle import MuscleParams, SimBlock, VirtualMuscle
from acquisition.simulator.profiles import DriveProfile
from closedloop.errors import ConfigError
from closedloop.stimulators import SimulatedStimulator
from closedloop.types import Chunk, StreamInfo

__all__ = ["GROUND_TRUTH_CHANNELS", "SimulatedParticipant", "truth_rows"]

#: Channels of the GroundTruth stream and their units.
GROUND_TRUTH_CHANNELS = (
    ("drive", "fraction"),
    ("fatigue", "fraction"),
    ("mwave_scale", "fraction"),
    ("freq_scale", "fraction"),
    ("mdf_true_hz", "Hz"),
    ("mnf_true_hz", "Hz"),
    ("fi_nsm5_true", "Hz^-6"),
    ("force_vol_n", "N"),
    ("force_stim_n", "N"),
    ("recruitment", "fraction"),
    ("mwave_ptp_true_uv", "uV"),
)


def emg_info(params: MuscleParams, name: str = "SimEMG", source_id: str = "") -> StreamInfo:
    return StreamInfo(
        name, "EMG", params.rate_hz, tuple(f"EMG{i + 1}" for i in range(params.n_channels)), ("microvolts",), source_id
    )


def force_info(params: MuscleParams, name: str = "SimForce", source_id: str = "") -> StreamInfo:
    return StreamInfo(name, "Force", params.rate_hz, ("force",), ("newtons",), source_id)


def truth_info(params: MuscleParams, chunk_size: int, name: str = "SimGroundTruth", source_id: str = "") -> StreamInfo:
    names, units = zip(*GROUND_TRUTH_CHANNELS, strict=True)
    return StreamInfo(name, "GroundTruth", params.rate_hz / chunk_size, names, units, source_id)


class _TruthState:
    """Keeps the last applied pulse's truth between blocks."""

    def __init__(self) -> None:
        self.recruitment = 0.0
        self.mwave_ptp_uv = 0.0


def truth_band(rate_hz: float) -> tuple[float, float]:
    """The band of the spectral truth: the estimators' default band-pass at this rate."""
    return (20.0, min(450.0, 0.45 * rate_hz))


def truth_rows(muscle: VirtualMuscle, block: SimBlock, state: _TruthState) -> np.ndarray:
    """One GroundTruth sample (at the block's last timestamp) as a ``(1, n)`` array.

    Spectral truth is that of the voluntary EMG process within the estimators' default band (20 to
    min(450, 0.45 x rate) Hz), computed with the estimators' own definitions.
    """
    if block.pulses:
        last = block.pulses[-1]
        state.recruitment = last.recruitment
        state.mwave_ptp_uv = float(last.mwave_ptp_uv[0])
    fat = float(block.fatigue[-1])
    mdf, mnf, fi = muscle.true_spectral_indices(fat, truth_band(muscle.params.rate_hz))
    return np.array(
        [
            [
                block.drive[-1],
                fat,
                block.mwave_scale[-1],
                block.freq_scale[-1],
                mdf,
                mnf,
                fi,
                block.f_vol_n[-1],
                block.f_stim_n[-1],
                state.recruitment,
                state.mwave_ptp_uv,
            ]
        ]
    )


class _Feed:
    """A recorded-only Source fed by the participant's EMG source."""

    def __init__(self, info: StreamInfo, clock) -> None:
        self.info = info
        self.clock = clock
        self._items: deque[Chunk] = deque()
        self._event = asyncio.Event()
        self._closed = False

    def put(self, chunk: Chunk) -> None:
        self._items.append(chunk)
        self._event.set()

    def end(self) -> None:
        self._closed = True
        self._event.set()

    async def __aenter__(self) -> _Feed:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def __aiter__(self) -> _Feed:
        return self

    async def __anext__(self) -> Chunk:
        while not self._items:
            if self._closed:
                raise StopAsyncIteration
            self._event.clear()
            await self._event.wait()
        return self._items.popleft()


class SimulatedParticipant:
    """A virtual participant as a Source of EMG, with ``force`` and ``truth`` Sources and a stimulator.

    Parameters
    ----------
    params:
        The muscle model's parameters.
    profile:
        Voluntary drive over time (profile time 0 = the first sample, or :meth:`cue`).
    chunk_size:
        Samples per chunk (like an amplifier's block size).
    duration_s:
        The source ends after this much simulated time (None: never).
    realtime:
        Pace chunks to the wall clock (True) or run in virtual time (False).
    wait_for_cue:
        Hold the drive at rest until :meth:`cue` is called (the profile starts at the cue time).
    """

    def __init__(
        self,
        params: MuscleParams | None = None,
        profile: DriveProfile | None = None,
        chunk_size: int = 8,
        duration_s: float | None = None,
        realtime: bool = False,
        wait_for_cue: bool = False,
    ) -> None:
        from acquisition.simulator.profiles import named_profile

        self.params = params or MuscleParams()
        if chunk_size < 1:
            raise ConfigError(f"chunk_size = {chunk_size}: must be >= 1 sample")
        self.profile = profile or named_profile("trapezoids")
        self.chunk_size = chunk_size
        self.duration_s = duration_s
        self.realtime = realtime
        t0 = time.monotonic() if realtime else 0.0
        self.muscle = VirtualMuscle(self.params, t0=t0)
        self._t0 = t0
        self.profile_start: float | None = None if wait_for_cue else t0
        self.info = emg_info(self.params)
        self.dtype = np.float32
        self.force = _Feed(force_info(self.params), self.clock)
        self.truth = _Feed(truth_info(self.params, chunk_size), self.clock)
        self.stimulator = SimulatedStimulator(self.muscle, self.clock)
        self._truth_state = _TruthState()
        #: Every pulse the muscle received, with its true recruitment and M-wave.
        self.applied_pulses: list = []

    def clock(self) -> float:
        """Current time: simulation time in virtual mode, the monotonic (LSL) clock in real time."""
        return time.monotonic() if self.realtime else self.muscle.now

    def cue(self, t: float) -> None:
        """Start the drive profile at time ``t``."""
        self.profile_start = t

    async def __aenter__(self) -> SimulatedParticipant:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.force.end()
        self.truth.end()

    def __aiter__(self) -> SimulatedParticipant:
        return self

    async def __anext__(self) -> Chunk:
        m = self.muscle
        fs = self.params.rate_hz
        n = self.chunk_size
        if self.duration_s is not None and m.now - self._t0 >= self.duration_s:
            self.force.end()
            self.truth.end()
            raise StopAsyncIteration
        t_last = m.now + (n - 1) / fs
        if self.realtime:
            delay = t_last - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        else:
            await asyncio.sleep(0)  # let other tasks (recording) run
        drive = self.profile.drive_at(m.now + np.arange(n) / fs, self.profile_start)
        block = m.generate(n, drive)
        self.applied_pulses.extend(block.pulses)
        arrival = time.perf_counter() if self.realtime else None
        self.force.put(Chunk(block.force_n[:, None], block.timestamps, self.force.info))
        self.truth.put(Chunk(truth_rows(m, block, self._truth_state), block.timestamps[-1:], self.truth.info))
        return Chunk(block.emg, block.timestamps, self.info, arrival)
