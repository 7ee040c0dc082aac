"""How NCut's stopping rules behave on planted attention, power walk k = 1..5.

    python jobs/manc_study.py [--regions 8,10,12] [--powers 1,2,3,4,5]

The same as `dsseg manc-study`; this script is what `ray job submit` runs from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dsseg.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["manc-study", *sys.argv[1:]]))
