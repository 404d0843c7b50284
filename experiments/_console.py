"""What the interactive commands share: a one-line progress display and running a session with an e-stop."""

from __future__ import annotations

import asyncio
import sys
import time

from closedloop.pipeline import Session, SessionResult

__all__ = ["Progress", "run_interactive"]


class Progress:
    """One status line, refreshed at most every 0.25 s, on a terminal only; at each new phase its instruction
    (what to tell the participant) on a line of its own."""

    def __init__(self, duration_s: float, enabled: bool, instructions: dict[str, str] | None = None) -> None:
        self.duration_s = duration_s
        self.enabled = enabled and sys.stderr.isatty()
        self.last = 0.0
        self.pulses = 0
        self.instructions = instructions or {}
        self.phase: str | None = None

    def __call__(self, t_rel: float, phase: str, est, amp: float) -> None:
        self.pulses += amp > 0
        if phase != self.phase:
            self.phase = phase
            text = self.instructions.get(phase)
            if self.enabled and text:
                sys.stderr.write(f"\r{' ' * 100}\r>> {phase}: {text}\n")
        now = time.monotonic()
        if not self.enabled or now - self.last < 0.25:
            return
        self.last = now
        frac = min(max(t_rel / self.duration_s, 0.0), 1.0)
        bar = "#" * int(frac * 30)
        pct = est.effort_pct_mvc
        effort = f"{pct:5.1f} % MVC" if pct == pct else f"{est.effort_smooth_uv:6.1f} uV  "
        sys.stderr.write(
            f"\r[{bar:<30}] {t_rel:5.1f}/{self.duration_s:g} s {phase:<9} effort {effort} "
            f"stim {amp:5.1f} mA  pulses {self.pulses}  "
        )
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def run_interactive(session: Session, bar: Progress, estop: bool) -> SessionResult:
    """Run ``session`` to its end; with ``estop`` (and a terminal), Enter is an emergency stop."""
    if estop and sys.stdin.isatty():
        from closedloop.estop import KeyboardEStop

        sys.stderr.write("Press Enter for an emergency stop (output off at once).\n")
        KeyboardEStop(session).start()
    try:
        return asyncio.run(session.run())
    finally:
        bar.close()
