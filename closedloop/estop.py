"""Emergency stop from the keyboard: any line on the terminal turns output off at once.

The watchdog, signals and the API (:meth:`closedloop.pipeline.Session.stop_threadsafe`) are the other ways;
the MQTT bridge uses the same call.
"""

from __future__ import annotations

import sys
import threading
from typing import TextIO

__all__ = ["KeyboardEStop"]


class KeyboardEStop:
    """Watches a text stream (the terminal) in a thread; the first line read is an e-stop.

    Parameters
    ----------
    session:
        The running :class:`~closedloop.pipeline.Session`.
    stream:
        What to read (default ``sys.stdin``).
    """

    def __init__(self, session, stream: TextIO | None = None) -> None:
        self.session = session
        self.stream = stream if stream is not None else sys.stdin
        self.triggered = threading.Event()
        self._thread = threading.Thread(target=self._run, name="closedloop-estop-keyboard", daemon=True)

    def start(self) -> KeyboardEStop:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            line = self.stream.readline()
        except (OSError, ValueError):  # the stream was closed: nobody can press a key any more
            return
        if line == "":  # end of input, not a key press
            return
        self.triggered.set()
        self.session.stop_threadsafe("e-stop (keyboard)")
