"""The simulated participant as a standalone LSL device (``closedloop simulate``).

It publishes three outlets, ``<prefix>-EMG`` (microvolts), ``<prefix>-Force`` (newtons) and
``<prefix>-GroundTruth`` (see :data:`~acquisition.simulator.source.GROUND_TRUTH_CHANNELS`), in real time in
chunks, and takes pulses from an LSL command stream (the format of
:class:`closedloop.stimulators.LSLStimulator`): each command sample is applied at the EMG sample of its
timestamp. Command channel -1 means "output off" (nothing to do for a muscle); -2 is a cue that starts the
drive profile at the command's timestamp (used by ``closedloop demo`` to align the participant's task
with the session's phases).
"""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np

from acquisition.lsl import LSLPublisher
from acquisition.simulator.muscle import MuscleParams, VirtualMuscle
from acquisition.simulator.profiles import DriveProfile
from acquisition.simulator.source import _TruthState, emg_info, force_info, truth_info, truth_rows
from closedloop.lslconfig import import_pylsl

__all__ = ["CUE_CHANNEL", "OFF_CHANNEL", "SimulatedDevice"]

OFF_CHANNEL = -1
CUE_CHANNEL = -2


class SimulatedDevice:
    """A virtual participant on LSL.

    Parameters
    ----------
    params:
        Muscle model parameters (channels, rate, recruitment, fatigue, ...).
    profile:
        Voluntary drive over time.
    prefix:
        Stream name prefix.
    source_id:
        Base of the outlets' source ids (``<id>-emg``, ``<id>-force``, ``<id>-truth``).
    command_name, command_source_id:
        The LSL command stream to take pulses from (matched by source_id if given, else by name).
    chunk_size:
        Samples per pushed chunk.
    duration_s:
        Stop after this long (None: until :meth:`stop`).
    wait_for_cue:
        Keep the drive at rest until a cue command arrives (else the profile starts immediately).
    """

    def __init__(
        self,
        params: MuscleParams,
        profile: DriveProfile,
        prefix: str = "closedloop-sim",
        source_id: str | None = None,
        command_name: str | None = "closedloop-stim",
        command_source_id: str | None = None,
        chunk_size: int = 8,
        duration_s: float | None = None,
        wait_for_cue: bool = False,
    ) -> None:
        self.pylsl = import_pylsl()
        self.params = params
        self.profile = profile
        self.chunk_size = chunk_size
        self.duration_s = duration_s
        self.wait_for_cue = wait_for_cue
        sid = source_id or f"closedloop-sim-{uuid.uuid4().hex[:12]}"
        self.source_id = sid
        self.command_query = (
            f"source_id='{command_source_id}'"
            if command_source_id
            else f"name='{command_name}'"
            if command_name
            else None
        )
        self.emg_out = LSLPublisher(emg_info(params, f"{prefix}-EMG", f"{sid}-emg"), "float32", chunk_size)
        self.force_out = LSLPublisher(force_info(params, f"{prefix}-Force", f"{sid}-force"), "double64", chunk_size)
        self.truth_out = LSLPublisher(
            truth_info(params, chunk_size, f"{prefix}-GroundTruth", f"{sid}-truth"), "double64"
        )
        self._stop = threading.Event()
        self._inlet = None
        self._offset = 0.0
        self.n_pulses = 0
        self.n_late = 0

    def stop(self) -> None:
        """Ask :meth:`run` to return."""
        self._stop.set()

    def _find_commands(self) -> None:
        """Background: resolve the command stream, open an inlet, then keep its clock offset current.

        Time correction is done here, by hand, because liblsl's automatic correction blocks the first
        pull for ~0.6 s, which the real-time loop cannot afford.
        """
        pylsl = self.pylsl
        while not self._stop.is_set() and self._inlet is None:
            found = pylsl.resolve_bypred(self.command_query, 1, 0.5)
            if found:
                inlet = pylsl.StreamInlet(found[0])
                inlet.open_stream(timeout=5.0)
                self._inlet = inlet
        while not self._stop.wait(0.0) and self._inlet is not None:
            try:
                self._offset = self._inlet.time_correction(timeout=2.0)
            except Exception:  # lost or timed out: keep the last offset
                pass
            self._stop.wait(5.0)

    def _apply_commands(self, muscle: VirtualMuscle) -> None:
        inlet = self._inlet
        if inlet is None:
            return
        try:
            data, ts = inlet.pull_chunk(timeout=0.0, max_samples=4096, as_numpy=True)
        except self.pylsl.util.LostError:
            self._inlet = None
            return
        for (channel, amplitude_ma, pulse_width_us), t in zip(data, ts + self._offset, strict=True):
            if channel == CUE_CHANNEL:
                self.profile_start = float(t)
            elif channel == -1:
                muscle.cancel_pending()  # output off: a burst's pulses still ahead never come
            elif channel >= 0 and amplitude_ma > 0:
                muscle.schedule_pulse(float(t), int(channel), float(amplitude_ma), float(pulse_width_us))
                self.n_pulses += 1

    def run(self) -> None:
        """Stream in real time until ``duration_s`` has passed or :meth:`stop` is called."""
        clock = self.pylsl.local_clock
        fs = self.params.rate_hz
        n = self.chunk_size
        t0 = clock()
        self.profile_start = None if self.wait_for_cue else t0
        muscle = VirtualMuscle(self.params, t0=t0)
        state = _TruthState()
        if self.command_query:
            threading.Thread(target=self._find_commands, name="sim-commands", daemon=True).start()
        t_end = None if self.duration_s is None else t0 + self.duration_s
        while not self._stop.is_set():
            t_last = muscle.now + (n - 1) / fs
            if t_end is not None and t_last > t_end:
                break
            delay = t_last - clock()
            if delay > 0:
                time.sleep(delay)
            self._apply_commands(muscle)
            drive = self.profile.drive_at(muscle.now + np.arange(n) / fs, self.profile_start)
            block = muscle.generate(n, drive)
            self.n_late += sum(p.late for p in block.pulses)
            self.emg_out.push(block.emg, t_last)
            self.force_out.push(block.force_n[:, None], t_last)
            self.truth_out.push(truth_rows(muscle, block, state), t_last)
        self.emg_out.close()
        self.force_out.close()
        self.truth_out.close()
