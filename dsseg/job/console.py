"""What a job prints: one progress line, and Ray's own chatter kept out of the user's terminal.

In a terminal the progress is a single line redrawn in place; elsewhere (``ray job logs``, a
file) it is a plain line every ``every_seconds``. Ray's per-operator progress blocks, its
token-auth notice for the embedded local Ray, and the core worker's spurious error about Ray
Data's actor constructor arguments (ray-project/ray#57733: Ray Data itself puts them in the
object store; the driver holds them for the whole run, so actor restarts work) are silenced.
Ray Data's warnings and errors still reach the terminal; its full logs stay in the session's
``logs/ray-data`` folder.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

# Lines of the driver's stderr (C++ core worker included) that are not the user's to act on.
SPURIOUS_STDERR = re.compile(rb"has constructor arguments in the object store and max_restarts > 0")
TERMINAL_REDRAW_SECONDS = 0.25


def duration_text(seconds: float) -> str:
    """``seconds`` as ``1h 02m``, ``3m 07s`` or ``12s``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def progress_text(
    done: float, total: int | None, seconds: float, errors: int, total_final: bool = True, before: int = 0
) -> str:
    """``dsseg: 120/2000 images (6%), 3.40 images/s, ETA 9m 13s, 2 errors``; ``done`` (this run's
    images, may be fractional, shown rounded down) counts on from ``before`` (images a resumed
    run found done: ``, 80 done before``); the rate and ETA are this run's. While the plan is still
    being read (``total_final`` False) the total is the images planned so far: ``120/≥2000
    images``, no share, no ETA; ``total`` None: none planned yet."""
    rate = done / seconds if seconds > 0 else 0.0
    errors_text = f"{errors} error{'' if errors == 1 else 's'}"
    before_text = f", {before} done before" if before else ""
    shown = int(done) + before
    if total is None or not total_final:
        planned = f"/≥{total}" if total else ""
        return f"dsseg: {shown}{planned} images, {rate:.2f} images/s, {errors_text}{before_text}"
    left = total - before - done
    eta = duration_text(left / rate) if rate > 0 and left > 0 else "–" if left > 0 else "0s"
    share = f" ({100 * shown / total:.0f}%)" if total else ""
    return f"dsseg: {shown}/{total} images{share}, {rate:.2f} images/s, ETA {eta}, {errors_text}{before_text}"


class ProgressLine:
    """Report a run's progress to ``stream`` (default stderr): redrawn in place when it is a
    terminal, else one line every ``every_seconds``. ``update`` is cheap to call per batch."""

    def __init__(self, total: int | None, every_seconds: float = 30.0, stream: TextIO | None = None) -> None:
        self.total = total
        self.total_final = total is not None
        self.before = 0
        self.stream = stream if stream is not None else sys.stderr
        self.in_terminal = self.stream.isatty()
        self.interval = TERMINAL_REDRAW_SECONDS if self.in_terminal else every_seconds
        self.start = time.perf_counter()
        self.last = -float("inf")  # the first update shows
        self.shown: tuple = ()

    def set_total(self, total: int, final: bool, before: int = 0) -> None:
        """The images in scope: all of them (``final``), or those planned so far; ``before`` of
        them were done by earlier runs."""
        self.total, self.total_final, self.before = total, final, before

    def due(self) -> bool:
        """Whether an ``update`` now would show (callers skip gathering its numbers otherwise)."""
        return time.perf_counter() - self.last >= self.interval

    def update(self, done: float, errors: int, final: bool = False) -> None:
        """Show ``done`` images of ``total`` (``errors`` of them error rows), at most once per
        interval unless ``final``; a final line that repeats the last shown is not drawn again."""
        now = time.perf_counter()
        if not final and now - self.last < self.interval:
            return
        self.last = now
        counts = (int(done), self.total, self.total_final, errors, self.before)
        if final and counts == self.shown and not self.in_terminal:
            return  # the last line already said it
        self.shown = counts
        text = progress_text(done, self.total, now - self.start, errors, self.total_final, self.before)
        if self.in_terminal:
            self.stream.write(f"\r{text}\x1b[K" + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def quiet_ray_data() -> None:
    """Ray Data in this driver: no progress blocks (``ProgressLine`` reports instead) and only
    warnings and errors on the console; its log files keep everything."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"
    for handler in logging.getLogger("ray.data").handlers:
        if handler.name == "console":  # Ray Data's console handler, not its log files
            handler.setLevel(max(handler.level, logging.WARNING))


@contextmanager
def without_token_auth_notice() -> Iterator[None]:
    """Hide Ray's notice that a new local cluster uses token authentication: the embedded
    local Ray is the job's own (authentication stays as Ray chose)."""
    notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = notice.level
    notice.setLevel(logging.ERROR)
    try:
        yield
    finally:
        notice.setLevel(level)


_muted = threading.Event()  # set on an interrupt: nothing more of this process's stderr reaches the terminal
_real_stderr: int | None = None  # the terminal's stderr while ``filtered_stderr`` is active (or after a mute)


def mute_console(stdout: bool = False) -> None:
    """From now on drop every line written to file descriptor 2 inside ``filtered_stderr`` (and
    send fd 2 to /dev/null when it ends), and with ``stdout`` send fd 1 to /dev/null; ``say``
    still reaches the terminal. Called on an interrupt, when Ray's shutdown chatter (its log
    monitor prints to both) is not the user's to read."""
    _muted.set()
    if stdout:
        sys.stdout.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)


def say(text: str) -> None:
    """Write one line to the real stderr, muted or not."""
    sys.stderr.flush()
    os.write(_real_stderr if _real_stderr is not None else 2, (text + "\n").encode())


@contextmanager
def filtered_stderr(drop: re.Pattern[bytes] = SPURIOUS_STDERR) -> Iterator[None]:
    """Pass every line this process writes to file descriptor 2 (Python and C++ alike) through,
    except those matching ``drop`` (and all of them after ``mute_console``). Enter it after Ray
    has started, so that Ray's own processes keep the real stderr."""
    global _real_stderr
    sys.stderr.flush()
    try:
        real = os.dup(2)
    except OSError:  # no file descriptor 2 (a daemon, some notebook kernels): nothing to filter
        yield
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    _real_stderr = real

    def pump() -> None:
        with os.fdopen(read_end, "rb") as lines, os.fdopen(os.dup(real), "wb", buffering=0) as out:
            for line in lines:
                if not _muted.is_set() and not drop.search(line):
                    out.write(line)

    thread = threading.Thread(target=pump, name="dsseg-stderr", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        if _muted.is_set():  # keep the terminal for `say`; later chatter goes nowhere
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        else:
            os.dup2(real, 2)  # closes the pipe's last write end: the pump drains it and stops
        thread.join(timeout=5)
        if not _muted.is_set():
            os.close(real)
            _real_stderr = None
