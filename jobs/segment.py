"""Segment a folder of images on Ray and write Parquet rows with COCO RLE masks.

    python jobs/segment.py --input PATH --output DIR [--backbone tiny|HUB_ID|LOCAL_DIR]
                           [--method diffseg] [--address RAY_ADDRESS] [--param NAME=VALUE ...]

Runs on an embedded local Ray unless --address or $RAY_ADDRESS (set by `ray job submit`) names a
cluster. The same as `dsseg job`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dsseg.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["job", *sys.argv[1:]]))
