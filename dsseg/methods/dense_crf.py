"""Dense CRF refinement (Krähenbühl & Koltun's fully connected CRF) of per-pixel class probabilities.

DiffSegmenter refines its pseudo-labels with a dense CRF. The CRF comes from ``pydensecrf2``
(an optional extra: ``pip install -e '.[crf]'``), a maintained build of the authors' C++ code.
Its parameters are not given in our references; the defaults are the ones DeepLab and most
weakly supervised segmentation code use: a Gaussian smoothness kernel (``sxy`` 3, weight 3)
and a bilateral appearance kernel (``sxy`` 80, ``srgb`` 13, weight 10).
"""

from __future__ import annotations

import numpy as np

CRF_INSTALL = "the dense CRF needs pydensecrf2: pip install -e '.[crf]' (or pip install pydensecrf2)"
GAUSSIAN_SXY, GAUSSIAN_WEIGHT = 3.0, 3.0
BILATERAL_SXY, BILATERAL_SRGB, BILATERAL_WEIGHT = 80.0, 13.0, 10.0
_MIN_PROBABILITY = 1e-6


def crf_available() -> bool:
    """Whether ``pydensecrf2`` is installed."""
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


def dense_crf(probabilities: np.ndarray, image: np.ndarray, iterations: int = 10) -> np.ndarray:
    """Mean-field inference of the dense CRF.

    probabilities: (C, H, W) float, non-negative, each pixel's C values summing to 1 (the unary
    term is −log p). image: (H, W, 3) uint8 RGB of the same size (the bilateral kernel's colours).
    Returns (C, H, W) float32 marginals, each pixel's summing to 1.
    """
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as error:
        raise RuntimeError(CRF_INSTALL) from error
    classes, height, width = probabilities.shape
    if image.shape != (height, width, 3) or image.dtype != np.uint8:
        raise ValueError(
            f"image must be ({height}, {width}, 3) uint8 like the probabilities; got {image.shape} {image.dtype}"
        )
    clipped = np.clip(probabilities.astype(np.float32), _MIN_PROBABILITY, 1.0)
    unary = np.ascontiguousarray(-np.log(clipped / clipped.sum(axis=0, keepdims=True)).reshape(classes, -1))
    crf = dcrf.DenseCRF2D(width, height, classes)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=GAUSSIAN_SXY, compat=GAUSSIAN_WEIGHT)
    crf.addPairwiseBilateral(
        sxy=BILATERAL_SXY, srgb=BILATERAL_SRGB, rgbim=np.ascontiguousarray(image), compat=BILATERAL_WEIGHT
    )
    return np.asarray(crf.inference(iterations), dtype=np.float32).reshape(classes, height, width)
