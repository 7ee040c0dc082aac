"""What a job prints: the progress line and the stderr filter."""

from __future__ import annotations

import io
import subprocess
import sys

from dsseg.job.console import ProgressLine, duration_text, progress_text


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_text_counts_images_rate_eta_and_errors():
    assert duration_text(12.4) == "12s" and duration_text(187) == "3m 07s" and duration_text(3725) == "1h 02m"
    text = progress_text(120.7, 2000, 60.0, 2)
    assert text == "dsseg: 120/2000 images (6%), 2.01 images/s, ETA 15m 34s, 2 errors"
    assert progress_text(0, 10, 5.0, 0).endswith("0.00 images/s, ETA –, 0 errors")
    assert progress_text(10, 10, 5.0, 1).endswith("ETA 0s, 1 error")
    resumed = progress_text(5, 23, 2.0, 0, before=8)  # 8 of 23 done by an earlier run: 13/23, 10 left
    assert resumed == "dsseg: 13/23 images (57%), 2.50 images/s, ETA 4s, 0 errors, 8 done before"
    assert progress_text(2, 40, 1.0, 0, total_final=False, before=3).startswith("dsseg: 5/≥40 images, 2.00")


def test_progress_is_one_redrawn_line_in_a_terminal_and_periodic_lines_elsewhere():
    log = io.StringIO()
    progress = ProgressLine(100, every_seconds=3600, stream=log)
    for done in range(0, 100, 10):
        progress.update(done, 0)
    progress.update(100, 3, final=True)
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("dsseg: 0/100 images") and "100/100" in lines[1]
    terminal = Terminal()
    progress = ProgressLine(100, stream=terminal)
    progress.update(0, 0)
    progress.update(100, 0, final=True)
    shown = terminal.getvalue()
    assert shown.count("\r") == 2 and shown.count("\n") == 1 and "\x1b[K" in shown


def test_filtered_stderr_drops_only_the_spurious_lines_of_every_writer():
    script = (
        "import os, sys\n"
        "from dsseg.job.console import filtered_stderr\n"
        "with filtered_stderr():\n"
        "    os.write(2, b'[E core_worker.cc] Actor has constructor arguments in the object store and max_restarts > 0.\\n')\n"
        "    os.write(2, b'a C++ line to keep\\n')\n"
        "    print('a Python line to keep', file=sys.stderr)\n"
        "print('after', file=sys.stderr)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stderr.splitlines() == ["a C++ line to keep", "a Python line to keep", "after"]


def test_filtered_stderr_without_a_stderr_descriptor_just_runs():
    script = (
        "import os\n"
        "os.close(2)\n"
        "from dsseg.job.console import filtered_stderr\n"
        "with filtered_stderr():\n"
        "    print('ran')\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout == "ran\n"
