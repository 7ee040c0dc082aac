"""Pseudo-label datasets on Ray: image-level labels (or none) → pixel pseudo-labels (VOC PNGs,
COCO JSON).

    python jobs/pseudolabel.py --input MANIFEST_OR_DIR --output DIR   (--help: VOC and COCO inputs)

The same as `dsseg pseudolabel`; this script is what `ray job submit` runs from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dsseg.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["pseudolabel", *sys.argv[1:]]))
