"""Benchmark evaluation on Ray: segment a dataset, score it under the papers' protocols, write
metrics and reports.

    python jobs/evaluate.py --preset NAME --root DIR --output DIR     (--list-presets, --help)

The same as `dsseg evaluate`; this script is what `ray job submit` runs from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dsseg.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
