"""What ``dsseg benchmark --compare`` takes from a source checkout: the float64 transcriptions of the
methods (``tests/oracles``) that it times dsseg's aggregation and segmentation against.

They are the tests' oracles and stay out of the wheel, so ``--compare`` runs from a checkout
(``python jobs/benchmark.py --compare``, or dsseg installed with ``pip install -e .``); from an
installed wheel it stops before loading anything and says so. Light: no torch here.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from types import ModuleType

ORACLES = Path(__file__).resolve().parents[2] / "tests" / "oracles"
COMPARED = ("diffseg_reference", "ncut_reference")  # what --compare reads
NEEDS_CHECKOUT = (
    "--compare times dsseg against the float64 transcriptions in tests/oracles, which only a source checkout has "
    f"(looked in {ORACLES}): run it from a checkout, e.g. python jobs/benchmark.py --compare"
)


def oracles_available() -> bool:
    """True when dsseg runs from a source checkout that holds the transcriptions ``--compare`` reads."""
    return all((ORACLES / f"{name}.py").is_file() for name in COMPARED)


@functools.cache
def load_oracle(name: str) -> ModuleType:
    """``tests/oracles/<name>.py`` of the checkout dsseg runs from, imported by its path (once)."""
    path = ORACLES / f"{name}.py"
    if not path.is_file():
        raise RuntimeError(NEEDS_CHECKOUT)
    spec = importlib.util.spec_from_file_location(f"dsseg_oracles.{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
