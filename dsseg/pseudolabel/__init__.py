"""Pseudo-label datasets: image-level labels (or none) → pixel pseudo-labels for training.

``make_pseudolabels(PseudoLabelRequest(...))`` runs a weakly supervised segment job for images
with labels (openvocab restricted to them, uncertain pixels 255) and a class-agnostic one for the
rest, then writes the VOC layout (``voc``), a COCO file (``coco``) and, against ground truth, a
quality report. Modules: ``settings`` (the request and the presets), ``inputs`` (images, classes,
segment jobs), ``voc`` (label PNGs on Ray), ``quality``, ``run``. The command and its output
layout: ``dsseg.commands.pseudolabel``.
"""

from dsseg.pseudolabel.settings import PSEUDO_LABEL_PRESETS, PseudoLabelPreset, PseudoLabelRequest

__all__ = ["PSEUDO_LABEL_PRESETS", "PseudoLabelPreset", "PseudoLabelRequest", "make_pseudolabels"]


def __getattr__(name: str):
    if name == "make_pseudolabels":  # loads Ray and the segment job only when a run is asked for
        from dsseg.pseudolabel.run import make_pseudolabels

        return make_pseudolabels
    raise AttributeError(name)
