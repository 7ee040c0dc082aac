"""``dsseg <command>``: the command line. Each command is a module here with ``build_parser()`` and
``run(args) -> exit status``; it turns its flags into typed settings and calls the library, which
never sees an ``argparse.Namespace``.

Every mistake ends in one line that names the flag as the user typed it, then where to read more
(exit 2): a flag argparse refuses, a ``ConfigError`` the library raises about a parameter (the
parser maps ``batch_size`` to ``--batch-size``, a method parameter to ``--param NAME``), missing
weights, a path that is not there. ``DSSEG_TRACEBACK=1`` shows the traceback instead. Only light
modules load before the flags are read, so ``--help`` answers at once.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

from dsseg.commands.common import UsageError, fail
from dsseg.errors import WeightsNotFoundError

# command → one line of help; the module is dsseg.commands.<command with _ for ->
COMMANDS = {
    "segment": "segment images locally (no Ray) and write PNG overlays",
    "job": "the Ray segment job: Parquet rows with COCO RLE masks (jobs/segment.py)",
    "evaluate": "benchmark evaluation under the papers' protocols (jobs/evaluate.py)",
    "pseudolabel": "pseudo-label datasets (jobs/pseudolabel.py)",
    "benchmark": "per-stage latency and memory (jobs/benchmark.py)",
    "manc-study": "NCut stopping rules on planted attention (jobs/manc_study.py)",
    "explore": "local web app: re-segment one image from cached attention, browse a job's output",
    "compact": "merge a job output's small part files into large ones (jobs/compact.py)",
    "export": "an output for Hugging Face datasets, Label Studio, CVAT, FiftyOne, COCO or VOC (jobs/export.py)",
}
# What a command's library code raises about the user's input; anything else is a bug and keeps its traceback.
USER_ERRORS = (UsageError, ValueError, OSError, WeightsNotFoundError)


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    return "usage: dsseg COMMAND ...\n" + "\n".join(lines) + "\n(dsseg COMMAND --help for each command's flags)"


def main(argv: Sequence[str] | None = None) -> int:
    """``dsseg COMMAND ARGS``: the exit status of the command (2 for a mistake, 130 when interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    if argv[0] not in COMMANDS:
        print(f"dsseg: error: unknown command {argv[0]!r}\n{usage()}", file=sys.stderr)
        return 2
    try:
        return run_command(argv[0], argv[1:])
    except KeyboardInterrupt as interrupt:  # Ctrl-C or SIGTERM (ray job stop): one line, status 130
        from dsseg.job.interrupts import JobInterrupted, quiet_exit

        ended = isinstance(interrupt, JobInterrupted)  # it says how many rows were written
        quiet_exit(str(interrupt) if ended else "interrupted; run the same command to resume")
        return 130  # not reached: quiet_exit leaves the process


def run_command(command: str, argv: list[str]) -> int:
    """Run ``dsseg COMMAND ARGV``; a mistake is one line on stderr and status 2. The first
    SIGINT/SIGTERM raises ``Interrupted`` (a second exits)."""
    from dsseg.job.interrupts import interruptible

    module = importlib.import_module(f"dsseg.commands.{command.replace('-', '_')}")
    parser = module.build_parser()
    with interruptible(mute_stdout=True):
        try:
            return module.run(parser.parse_args(argv))
        except BrokenPipeError:  # the reader went away (`dsseg evaluate --list-presets | head`)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
        except USER_ERRORS as error:
            if os.environ.get("DSSEG_TRACEBACK"):
                raise
            return fail(f"dsseg {command}", parser.describe(error))
