"""Merge the small part files of a segment job's output into large ones (for `ray job submit`).

    python jobs/compact.py OUTPUT [--target-mb 128] [--config ID ...]

Prints a JSON summary. The same as `dsseg compact`; see dsseg/io/compact.py for the commit
protocol that keeps readers and resumed jobs consistent if it is killed (rerun it to finish).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dsseg.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["compact", *sys.argv[1:]]))
