"""A line-by-line transcription of google/diffseg's evaluation (``diffseg/utils.py``:
``_fast_hist`` and ``hungarian_matching``; ``benchmarks.ipynb``: the final scores), kept apart
from dsseg's own code so the tests compare against the official algorithm, not our reading of it.

Ground truth as dsseg stores it (255 = ignore); the official loaders map ignore to −1 first, and
both are excluded by the same ``0 <= label < n_class`` mask.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.optimize import linear_sum_assignment


def tf_nearest_index(x: int, in_size: int, out_size: int) -> int:
    """TF2 ``resize_nearest_neighbor`` with half-pixel centres (image_resizer_state.h,
    resize_nearest_neighbor_op.cc): min(floorf((float(x) + 0.5f) * scale), in − 1), scale = in / out in float32."""
    scale = np.float32(in_size) / np.float32(out_size)
    return min(int(np.floor((np.float32(x) + np.float32(0.5)) * scale)), in_size - 1)


def process_label(label: np.ndarray, resolution: int = 512) -> np.ndarray:
    """The label half of ``data/coco/coco_data.py`` ``process_image``: the centred square
    (``w_start = (h - c) // 2`` on the first axis), then ``tf.image.resize`` to resolution² with
    NEAREST_NEIGHBOR, each source index computed on its own."""
    h, w = label.shape
    c = min(h, w)
    w_start, h_start = (h - c) // 2, (w - c) // 2
    square = label[w_start : w_start + c, h_start : h_start + c]
    rows = [tf_nearest_index(y, c, resolution) for y in range(resolution)]
    cols = [tf_nearest_index(x, c, resolution) for x in range(resolution)]
    return square[np.ix_(rows, cols)]


def fast_hist(label_true: np.ndarray, label_pred: np.ndarray, n_class: int) -> np.ndarray:
    """(n_class, max(n_class, max(pred) + 1)) class × predicted-id counts over labelled pixels."""
    pred_n_class = np.maximum(n_class, label_pred.max() + 1)
    mask = (label_true >= 0) & (label_true < n_class)
    hist = np.bincount(pred_n_class * label_true[mask] + label_pred[mask], minlength=n_class * pred_n_class)
    return hist.reshape(n_class, pred_n_class)


def hungarian_matching(preds, labels, n_class: int):
    """TP, FP, FN (float arrays over classes) and the labelled pixel count of a batch of images."""
    tp, fp, fn = np.zeros(n_class), np.zeros(n_class), np.zeros(n_class)
    total = 0
    for pred, label in zip(preds, labels):
        hist = fast_hist(
            np.asarray(label, dtype=np.int64).flatten(), np.asarray(pred, dtype=np.int64).flatten(), n_class
        )
        row_ind, col_ind = linear_sum_assignment(hist, maximize=True)
        total += hist.sum()
        fn += np.sum(hist, 1) - hist[row_ind, col_ind]
        tp += hist[row_ind, col_ind]
        hist = hist[:, col_ind]
        fp += np.sum(hist, 0) - np.diag(hist)
    return tp, fp, fn, total


def final_scores(tp, fp, fn, total) -> tuple[float, float]:
    """(pixel accuracy, mIoU) as fractions, as the notebook prints them."""
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-ignored batch: 0/0 and an empty nanmean
        iou = tp / (tp + fp + fn)
        return tp.sum() / total, float(np.nanmean(iou))
