"""Per-stage latency and memory of the segmentation path, printed as JSON.

    python jobs/benchmark.py --backbone sd-v1-random --device cuda [--compare]

The same as `dsseg benchmark`; this script is what `ray job submit` runs from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dsseg.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
