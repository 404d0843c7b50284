"""The live closed loop over real LSL, framework against a minimal hand-written loop, in one run.

    python -m bench.closed_loop [--channels 64] [--rate 2048] [--stim-hz 50] [--seconds 20] [--json PATH]

Both contenders read the same kind of stream: a pusher process (:mod:`bench._lsl`) with one LSL outlet on
loopback, pushing chunks of 8 samples on the stream's real-time schedule, each stamped with
``local_clock()`` at its push (liblsl gives the stamp to the chunk's last sample). Each runs in a process of
its own and is measured identically (:mod:`bench.peer`, which also runs the peers).

framework
    closedloop's live session as a lab runs it: :class:`~acquisition.lsl.LSLSource` (reader thread), the
    orchestrator with the recorder (session.xdf, estimates.csv), the full
    :class:`~closedloop.estimation.interval.IntervalEstimator` (nlms: artifact location and blanking,
    M-wave, volitional EMG, spectral indices), :class:`~controllers.proportional.ProportionalAssist`, the
    :class:`~closedloop.safety.SafetyLayer`, the watchdog and the
    :class:`~closedloop.stimulators.SimulatedStimulator` (its participant only notes each pulse).
baseline
    What a careful lab would hand-write: a dedicated pylsl reader thread, ``pull_chunk(min_samples=1)``
    into a preallocated buffer, ``call_soon_threadsafe`` into asyncio, ``sosfilt`` with carried ``zi``, RMS
    of the post-M-wave window, a proportional rule (:class:`bench._lsl.PulseWork`). No recording, no
    artifact handling, no safety layer, no watchdog.

Per pulse: end-to-end latency (push of the chunk holding the interval's last sample -> pulse handed to the
stimulator, both on ``local_clock``) and decision latency (the pull that brought that sample returned ->
pulse handed over), median / p99 / max after a 1-s warm-up; deadline misses (decision > 5 ms, framework);
CPU % of the consuming process (all its threads); samples received against pushed. The ratio framework /
baseline is on the median end-to-end latency.
"""

from __future__ import annotations

from closedloop.lslconfig import use_loopback

use_loopback(force=True)  # before anything imports pylsl

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

from bench.peer import format_table, run_contender  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.closed_loop", description=__doc__.split("\n")[0])
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--rate", type=float, default=2048.0)
    p.add_argument("--stim-hz", type=float, default=50.0)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--json", default=None, metavar="PATH", help="also write the figures as JSON")
    args = p.parse_args(argv)
    print(
        f"# closed loop over LSL: {args.channels} ch x {args.rate:g} Hz, chunks of 8, {args.stim_hz:g} Hz pulses, "
        f"{args.seconds:g} s per contender, first 1 s of decisions dropped",
        flush=True,
    )
    rows = [
        run_contender(name, channels=args.channels, rate_hz=args.rate, stim_hz=args.stim_hz, seconds=args.seconds)
        for name in ("baseline", "framework")
    ]
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
