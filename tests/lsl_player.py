"""A test LSL device in its own process: pushes a sample-index channel plus a sine, in chunks, in real time.

Usage: python lsl_player.py SOURCE_ID N_CHANNELS RATE_HZ CHUNK SECONDS [STALL_AFTER_S]

Channel 0 carries the running sample index, so a consumer can prove that nothing was dropped or
reordered. With STALL_AFTER_S the player stops pushing after that many seconds but keeps its outlet open
(a stalled amplifier) until SECONDS have passed.
"""

import sys
import time

from closedloop.lslconfig import use_loopback

use_loopback(force=True)

import numpy as np  # noqa: E402
import pylsl  # noqa: E402


def main() -> None:
    source_id, n_ch, rate, chunk, seconds = (
        sys.argv[1],
        int(sys.argv[2]),
        float(sys.argv[3]),
        int(sys.argv[4]),
        float(sys.argv[5]),
    )
    stall_after = float(sys.argv[6]) if len(sys.argv) > 6 else None
    info = pylsl.StreamInfo("player", "EMG", n_ch, rate, pylsl.cf_float32, source_id)
    chans = info.desc().append_child("channels")
    for i in range(n_ch):
        ch = chans.append_child("channel")
        ch.append_child_value("label", "index" if i == 0 else f"sine{i}")
        ch.append_child_value("unit", "microvolts")
    outlet = pylsl.StreamOutlet(info, chunk)
    outlet.wait_for_consumers(10.0)
    print("ready", flush=True)
    t0 = pylsl.local_clock()
    n = 0
    while True:
        now = pylsl.local_clock()
        if now - t0 > seconds:
            break
        if stall_after is not None and now - t0 > stall_after:
            time.sleep(0.01)
            continue
        due = int((now - t0) * rate)
        while n + chunk <= due:
            idx = np.arange(n, n + chunk)
            x = np.empty((chunk, n_ch), dtype=np.float32)
            x[:, 0] = idx
            x[:, 1:] = np.sin(2 * np.pi * 10 * idx / rate)[:, None]
            outlet.push_chunk(x, t0 + (n + chunk - 1) / rate)
            n += chunk
        time.sleep(0.001)
    print(f"pushed {n}", flush=True)


if __name__ == "__main__":
    main()
