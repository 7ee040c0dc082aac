"""Ctrl-C and SIGTERM (what ``ray job stop`` sends) end a command in one line, not a traceback.

The first signal mutes the console (Ray's shutdown chatter) and raises ``Interrupted`` in the
main thread, where the segment job writes the rows it holds and says how many; a second signal
exits at once. ``ray job stop`` waits ``RAY_JOB_STOP_WAIT_TIME_S`` (3 s by default) before its
SIGKILL, so what runs after the first signal is short: one Parquet write per config.

Ctrl-C in a terminal reaches only the driver: Ray 2.60 starts its own processes with SIGINT
blocked (GCS, raylet) or in their own process groups (workers). Ray's teardown can still abort
(an abseil ``Mutex corrupt`` from a thread calling into a core worker being destroyed; Ray
issues #18995 and #37288 describe such teardown races), so a command ends an interrupt with
``quiet_exit``: the console muted, Ray shut down, then ``os._exit`` without the interpreter's
finalisation. Rows are safe by then: every part file is written atomically before the line.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from dsseg.job.console import mute_console, say

INTERRUPTED_EXIT = 130  # the shell's status for a command ended by SIGINT


class Interrupted(KeyboardInterrupt):
    """The first SIGINT or SIGTERM, raised in the main thread."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(signal.Signals(signal_number).name)
        self.signal_number = signal_number


class JobInterrupted(Interrupted):
    """A segment job stopped by a signal after writing ``rows_written`` rows to ``output``."""

    def __init__(self, signal_number: int, output: str, rows_written: int) -> None:
        super().__init__(signal_number)
        self.output = output
        self.rows_written = rows_written

    def __str__(self) -> str:
        return (
            f"interrupted: {self.rows_written} row{'' if self.rows_written == 1 else 's'} written to {self.output}; "
            "run the same command to resume"
        )


_installed = False  # whether an ``interruptible`` block is active (an inner one defers to it)
_handler = None  # its handler, for ``reclaim_signals``


@contextmanager
def interruptible(mute_stdout: bool = False) -> Iterator[None]:
    """Inside: the first SIGINT/SIGTERM mutes the console (stderr, and with ``mute_stdout`` also
    stdout: a command that then exits) and raises ``Interrupted``; a second exits at once
    (status 130). Outside the main thread, or inside another such block, it adds nothing."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handle(number: int, frame: FrameType | None) -> None:
        if received:
            os._exit(INTERRUPTED_EXIT)
        received.append(number)
        mute_console(stdout=mute_stdout)
        raise Interrupted(number)

    global _handler
    previous = {number: signal.signal(number, handle) for number in (signal.SIGINT, signal.SIGTERM)}
    _installed, _handler = True, handle
    try:
        yield
    finally:
        _installed, _handler = False, None
        for number, handler in previous.items():
            signal.signal(number, handler)


def reclaim_signals() -> None:
    """Install the active ``interruptible`` handler again: ``ray.init`` puts its core worker's
    failure handler on SIGTERM (it prints a stack and aborts), which would bypass ours."""
    if _handler is not None and threading.current_thread() is threading.main_thread():
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, _handler)


def quiet_exit(message: str, status: int = INTERRUPTED_EXIT) -> None:
    """Say ``message``, then leave without a word more: stdout and stderr to /dev/null, Ray shut
    down if this process started or joined it, ``os._exit(status)``."""
    say(message)
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    signal.signal(signal.SIGINT, lambda *_: os._exit(status))  # a further Ctrl-C ends the shutdown
    signal.signal(signal.SIGTERM, lambda *_: os._exit(status))
    try:
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            ray.shutdown()
    finally:
        os._exit(status)
