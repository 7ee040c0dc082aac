"""Benchmark presets: one published table row, one name.

A preset fixes everything a paper's number depends on: the dataset (and split), the backbone,
the extraction (timestep, noise, inversion, which UNet blocks and levels), the method's
parameters, the frame the scores are taken in and the protocol, with the published scores of
that row. ``jobs/evaluate.py --preset NAME`` runs it; ``--list-presets`` prints them all.

Where a paper leaves a setting open, the preset makes a choice and says so in ``choices``; the
report prints them. A run with other settings still works: its rows are marked as matching no
preset, and no published number is printed beside them. Numbers are in percent.

Sources: DiffSeg (Tian et al., CVPR 2024) and its official code (google/diffseg); Diffusing,
Walking and Cutting (Ivanova et al., WACV 2026, "DWC"); DiffSegmenter (Wang et al.) and its
code (VCG-team/DiffSegmenter); DiffCut (Couairon et al., NeurIPS 2024) and its code
(PaulCouairon/DiffCut), with the re-runs of it in DWC (Table 5) and Seg4Diff (Kim et al.).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dsseg.evaluation.preset import (
    BACKBONE_ALIASES,
    BLIP_LARGE,
    SD3_MEDIUM,
    SD14,
    SD15,
    SSD1B,
    Preset,
    ReleasedFile,
    Tuning,
    filter_identity,
    settings_key,
)
from dsseg.model.families import RANDOM_BACKBONES

DIFFSEG = "DiffSeg (Tian et al., CVPR 2024)"
DWC = "Diffusing, Walking and Cutting (Ivanova et al.)"
DIFFSEGMENTER = "DiffSegmenter (Wang et al.)"
DIFFCUT = "DiffCut (Couairon et al., NeurIPS 2024)"
SEG4DIFF = "Seg4Diff (Kim et al., NeurIPS 2025), re-running DiffCut"
SEG4DIFF_OWN = "Seg4Diff (Kim et al., NeurIPS 2025)"
SEG4DIFF_CHOICES = (
    "as the released code (cvlab-kaist/Seg4Diff c81a2c62, eval_unsup.yaml + seg4diff_model_unsup.py): SD3-medium without T5, "
    "the image squashed to 1024², flow-matching noise at timesteps[-8] of 28, block 9's image→text attention over the 77 CLIP "
    "tokens, the KL threshold the code hard-codes (0.1; its config's 0.035 is not read), no mask cap (MAX_MASK is not applied)",
    "the noise is seeded (the released code draws it unseeded); the image is not padded to a multiple of 32 before squashing",
    "scored in dsseg's per-image Hungarian protocol at the label's own size; the released evaluation matches clusters to classes "
    "per row of pixels (train_net.py hungarian_matching on a 2-D map), which favours it, so its figures are not comparable",
    "no published figure beside the result: the numbers quoted for this row in our references (other papers citing Seg4Diff) "
    "could not be checked against the Seg4Diff paper here",
)

DIFFSEG_CHOICES = (
    "as the official code: all 16 self-attention layers (down, mid, up), heads and layers of a level averaged, "
    "levels weighted ∝ size; t = 300 on the clean latent; centre square, bilinear 512² without antialiasing",
    "the resized image is rounded to 8-bit before the VAE (the official code keeps TF's float32 values): "
    "at most half a grey level",
    "dtype: dsseg's default (float16 on CUDA); the official code ran Keras in float32",
)
DWC_CHOICES = (
    "'the denoising U-Net decoder': the up blocks' self-attention (they hold the 64², 32² and 16² levels)",
    "heads 'summed' and P 'row-stochastic': the head mean (the sum renormalised), so every row of P sums to 1",
    "MAN-C threshold n·T/(2m) on A = Pᵏ·(Pᵏ)ᵀ built from that row-stochastic P (the scale the paper's text fixes)",
    "DDIM inversion of the clean latent (posterior mean) for 10 of 50 steps with the empty prompt, "
    "then one UNet step at the 10th timestep; evaluation in DiffSeg's protocol (centre square, 512²)",
    "not stated, dsseg's defaults: at least 16 latent cells per segment, at most 12 levels of splits, "
    "every split position along the Fiedler vector tried",
)
DIFFCUT_CHOICES = (
    "as the released code (dataloader/iterator.py, tools/ldm.py, diffcut/recursive_normalized_cut.py, tools/pamr.py, "
    "eval_diffcut.py): the centred square of side min(H, W) − 1 at torchvision's CenterCrop offsets, bilinear 1024² "
    "without antialiasing; the output of the last down-path self-attention layer at t = 50; W = minmax(cosine)^10; "
    "dense float32 eigenvectors; 100 split values from 0.99·min to 0.99·max of the Fiedler vector; below the root, "
    "nodes whose affinity row holds a zero dropped from the cuts; leaves numbered by the released assembly and "
    "assigned at 128²; PAMR (centre pixel in the local spread) then a 3×3 median filter where the row uses it",
    "scored at 128² as eval_diffcut.py: the label cropped like the image, nearest-exact to 1024², PyTorch's "
    "nearest to 128²; per-image Hungarian over all classes, TP/FP/FN summed over the split",
    "the resized image is rounded to 8-bit before the VAE (the released code keeps float values): at most half a "
    "grey level",
    "seeded noise with dsseg's seed; the released code draws its noise with seed 42 on the GPU",
    "deliberately otherwise: splits stop at depth 30 (the released code has no limit); NCut costs in float64 (the "
    "released code: the float32 Rayleigh quotient, equal in exact arithmetic); leaves kept apart by exact codes (the "
    "released float32 codes collide past about 40 accepted splits and merge leaves); segment ids are compact in the "
    "rows, where a leaf with no pixel at 128² leaves an empty id in the released code's Hungarian matrix (ties "
    "between equally good assignments may then go otherwise)",
)
DIFFCUT_OPENVOC_CHOICES = (
    "as the released code (eval_diffcut_openvoc.py at PaulCouairon/DiffCut 10663580, with dataloader/iterator.py, "
    "tools/ldm.py, diffcut/recursive_normalized_cut.py, tools/pamr.py, tools/clip_classifier.py) at its command-line "
    "defaults: SSD-1B, step 50, img_size 1024, τ 0.5, α 10, and PAMR (--refinement is store_true with default True: "
    "it always refines); the centred square of side min(H, W) − 1 at torchvision's CenterCrop offsets, bilinear "
    "1024² without antialiasing; the output of the last down-path self-attention layer at t = 50; W = "
    "minmax(cosine)^10; dense float32 eigenvectors; 100 split values from 0.99·min to 0.99·max of the Fiedler "
    "vector; below the root, nodes whose affinity row holds a zero dropped from the cuts; leaves numbered by the "
    "released assembly and assigned at 1024² (generate_masks(mask_size=(1024, 1024)): assign_factor 32 on the 32² "
    "feature grid, upsample_factor 1); PAMR at 1024² with the 1024² image, 15 iterations, dilations 1, 2, 4, 8, 12, "
    "24, 32, 64 (centre pixel in the local spread), then a 3×3 median filter",
    "each segment named by CLIP as associate_label does (naming='clip'): open_clip's convnext_large_d_320 "
    "(laion2b_s29b_b131k_ft_soup) in float32 reads the whole cropped 1024² image in [0, 1] without CLIP's "
    "normalisation (COCO-Object: resized bilinearly to 2048² first, clip_image_size 2048); its dense features "
    "pooled under each segment (mask nearest-exact to the feature grid), the head and projection, 14 ViLD "
    "templates, the max over a class's synonyms, arg-max of the softmax; background a text class, first",
    "the class names are dsseg's plain ones (vocabularies voc20, context59, coco80, and 'background'): the released "
    "run prompts with synonym lists read from files on the authors' machine (data/metadata/datasets/"
    "openseg_classes.py opens ODISE's *_with_prompt_eng.txt, of which FC-CLIP publishes copies; the detectron2 "
    "registration modules that load them are not released): e.g. VOC's background with some 70 synonyms (crops, "
    "bush, wall, sky, …), 'tvmonitor,monitor,tv'; Context's road 'street,streets', computer 'computer case', light "
    "'lamp,lamps,bulb,bulbs'; COCO's orange 'orange fruit'. dsseg's naming cannot prompt a class with synonyms and "
    "still name the segment by the dataset's class, so these prompts differ from the released ones",
    "scored in dsseg's semantic protocol in the model frame at 1024² (the label cropped like the image, "
    "nearest-exact to 1024², as released): the class × class confusion summed over the split, IoU per class over "
    "the split, the mean over classes; the released script scores each image with torchmetrics' JaccardIndex("
    "task='multiclass', num_classes=K), macro, no ignore index, and averages the per-image values (a recent "
    "torchmetrics leaves the classes absent from both prediction and label out of an image's mean; older ones "
    "count them as 0; the version is not pinned): dsseg has no such per-image semantic average, so the numbers "
    "are not comparable",
    "the resized image is rounded to 8-bit before the VAE, PAMR and CLIP (the released code keeps float values): "
    "at most half a grey level",
    "seeded noise with dsseg's seed; the released code draws its noise with seed 42 on the GPU",
    "deliberately otherwise, as the unsupervised DiffCut presets: splits stop at depth 30, NCut costs in float64, "
    "leaves kept apart by exact codes",
    "no published figure: our references record DiffCut's VOC 65.2, Context 56.5 and COCO-Object 34.1 as its "
    "unsupervised (per-image Hungarian) numbers, and no open-vocabulary number of the paper",
)
DIFFCUT_OPENVOC_DATA = {
    "voc2012": "VOC: the 1,449 val images (FC-CLIP's pascal_voc_d2 'validation', from ImageSets/Segmentation/val.txt) "
    "and the released list's order 'background' + the 20 classes; its labels (annotations_pascal20: background and "
    "the 255 object borders both 255, then −1, +1) count the borders as background and score them, where dsseg's "
    "voc2012 reader ignores them",
    "context60": "Context: the val split; the released labels (FC-CLIP's annotations_ctx59: 255 = Context's "
    "background, then −1, +1) put background at class 0 as context60 does; 'background' inserted before the 59 "
    "classes, as released",
    "coco_object_curated": "COCO-Object: the 2,175 curated val2017 images (Coco164kFull_Stuff_Coarse_7.txt) and their "
    "stuffthingmaps, the 80 things → 1..80, stuff and unlabelled → background, every pixel scored (the reader "
    "coco_object_curated); the released mapping (dataloader/coco/coco_object_mapping.pickle) is binary and not read "
    "here: things in COCO id order, the order of the CLIP class list it is scored against ('background' + the 80 "
    "thing_classes: with FC-CLIP's registration, the one the code adapts, that metadata holds no stuff_classes, "
    "so the classifier falls back to thing_classes, as N_CLASS = 81 requires)",
}
DWC_TABLE1_LEVELS = (
    "Table 1 does not state its resolutions: §3.1 makes all four levels (8, 16, 32, 64) the default and the preset "
    "takes that reading (the best row's {64, 32, 16} comes from the level ablation of Table 3)"
)
DWC_FOUR_LEVELS = "the 8² level is read from the mid block, the only 8² self-attention (the decoder has none)"

DIFFSEGMENTER_CHOICES = (
    "as the released code (open_vocabulary/<set>/ptp_stable_*.py, evaluation_*.py): the image squashed to 512² "
    "(bilinear), noised once at t = 100, one UNet call per candidate class; its prompt 'a photograph of {name}' "
    "(VOC; 'a photography of {name}' for COCO and Context) in the authors' spellings, continued by BLIP-large "
    "conditioned on it, the name's last word weighted as Compel's 'word++' (e + 1.21·(z − e)); the class map read "
    "from the name's first (VOC) or last (COCO, Context) token; cross-attention fused 0.3/0.5/0.1/0.1 "
    "(8/16/32/64), refined by the 64² self-attention of the class's own prompt run, resized to the image's size, "
    "then min–max normalised; a constant background score, arg-max; mIoU over all classes with background, "
    "TP/FP/FN summed over the split, at the label's own size",
    "candidate classes: the released per-image lists (the union of image_similarity and text_similarity), "
    "given with --candidates FILE",
    "the VAE posterior mean and seeded noise (the released code draws a posterior sample and unseeded noise)",
    "the background score is the best of 0.30–0.74 on the evaluated split itself, as the released evaluation "
    "picks it: an oracle threshold, reported as such; --tune-on SPLIT adds the score at the threshold chosen on "
    "another split beside it",
)
RELEASED_CANDIDATES = (
    "VCG-team/DiffSegmenter (github.com/VCG-team/DiffSegmenter), dataset/{}/predict_syn_txt_0.8_img_0.97.json"
)


def _grid(low: float, high: float, step: float) -> tuple[float, ...]:
    count = round((high - low) / step) + 1
    return tuple(round(low + i * step, 6) for i in range(count))


DIFFSEG_PARAMS = {"timestep": 300, "noise": "none", "geometry": "center_crop", "image_size": 512, "refine": False}
DWC_BASE = {
    "noise": "ddim_inversion",
    "inversion_steps": 10,
    "num_inference_steps": 50,
    "geometry": "center_crop",
    "image_size": 512,
}
DWC_BEST = {
    **DWC_BASE,
    "blocks": ("up",),
    "graph": "dot",
    "power": 1,
    "stopping": "manc_ncut",
    "resolutions": (64, 32, 16),
}
DIFFSEGMENTER_PARAMS = {  # the released VOC script (ptp_stable_best.py)
    "noise": "noise",
    "timestep": 100,
    "geometry": "squash",
    "image_size": 512,
    "class_template": "a photograph of {class}",
    "class_weight": 1.21,
    "class_weighting": "compel",
    "class_tokens": "first",
    "participle_offset": 1,
    "spellings": "diffsegmenter-voc20",
    "descriptors": "caption",
}
DIFFSEGMENTER_COCO = {  # ptp_stable_coco.py (its "ing" token two on, as released)
    **DIFFSEGMENTER_PARAMS,
    "class_template": "a photography of {class}",
    "class_tokens": "last",
    "participle_offset": 2,
    "spellings": "diffsegmenter-coco80",
}
DIFFSEGMENTER_CONTEXT = {**DIFFSEGMENTER_COCO, "participle_offset": 1, "spellings": "diffsegmenter-context59"}
BACKGROUND_TUNING = _grid(0.30, 0.74, 0.01)


SPLITS = {"cocostuff27": "val2017", "cityscapes27": "val", "ade20k150": "validation"}


def _diffseg(
    name: str, paper: str, row: str, dataset: str, protocol: str, published: dict, kl_threshold: float
) -> Preset:
    """A row measured with DiffSeg as its official code runs it (τ the row's)."""
    params = {**DIFFSEG_PARAMS, "kl_threshold": kl_threshold}
    return Preset(name, paper, row, dataset, protocol, published, SD14, "diffseg", params, choices=DIFFSEG_CHOICES)


def _dwc(
    name: str, row: str, dataset: str, protocol: str, published: dict, choices: tuple = (), **changes: Any
) -> Preset:
    """A row of Diffusing, Walking and Cutting: its best setting with ``changes``."""
    params = {**DWC_BEST, **changes}
    return Preset(name, DWC, row, dataset, protocol, published, SD14, "ncut", params, choices=(*DWC_CHOICES, *choices))


def _diffsegmenter(name: str, dataset: str, split: str, miou: float, params: dict, candidates: ReleasedFile) -> Preset:
    """A zero-shot open-vocabulary row of DiffSegmenter (mIoU, the background threshold chosen on the
    evaluated split as the paper did: an oracle, reported as such)."""
    tuning = Tuning("background_threshold", BACKGROUND_TUNING, split, oracle=True)
    return Preset(
        name, DIFFSEGMENTER, f"zero-shot open vocabulary, {dataset} (oracle background threshold)", dataset, "semantic",
        {"miou": miou}, SD15, "openvocab", params, frame="label", split=split, tuning=tuning,
        choices=DIFFSEGMENTER_CHOICES, candidates=candidates, captioner=BLIP_LARGE,
    )  # fmt: skip


def _released(folder: str, sha256: str) -> ReleasedFile:
    return ReleasedFile(RELEASED_CANDIDATES.format(folder), sha256)


DIFFCUT_PARAMS = {"geometry": "diffcut_crop", "image_size": 1024}
DIFFCUT_SCORE_SIZE = 128  # eval_diffcut.py scores at the 128² assignment grid


def _diffcut(
    name: str, paper: str, row: str, dataset: str, published: dict, source: str, backbone: str = SD14,
    tau: float = 0.2, **changes: Any,
) -> Preset:  # fmt: skip
    """A row of DiffCut as its released code runs it (SD 1.4: τ 0.2; SSD-1B: τ 0.5), scored at 128²;
    ``paper`` reported the number, ``source`` says where and how."""
    params = {**DIFFCUT_PARAMS, "tau": tau, **changes}
    return Preset(
        name, paper, row, dataset, "per_image", published, backbone, "diffcut", params, frame="model",
        choices=(*DIFFCUT_CHOICES, source), score_size=DIFFCUT_SCORE_SIZE,
    )  # fmt: skip


DIFFCUT_OPENVOC_PARAMS = {  # eval_diffcut_openvoc.py's defaults: masks at 1024², PAMR(15, [1, …, 64]), CLIP names
    **DIFFCUT_PARAMS,
    "tau": 0.5,
    "assign_factor": 32,
    "upsample_factor": 1,
    "pamr_iterations": 15,
    "pamr_dilations": (1, 2, 4, 8, 12, 24, 32, 64),
    "naming": "clip",
    "clip_background": True,
}


def _diffcut_openvoc(name: str, row: str, dataset: str, split: str, vocabulary: str, **changes: Any) -> Preset:
    """An open-vocabulary row of DiffCut on SSD-1B as eval_diffcut_openvoc.py runs it: segments named by
    CLIP among the dataset's classes, scored in the 1024² model frame (no published number recorded)."""
    params = {**DIFFCUT_OPENVOC_PARAMS, "vocabulary": vocabulary, **changes}
    return Preset(
        name, DIFFCUT, row, dataset, "semantic", {}, SSD1B, "diffcut", params, frame="model", split=split,
        choices=(*DIFFCUT_OPENVOC_CHOICES, DIFFCUT_OPENVOC_DATA[dataset]),
    )  # fmt: skip


def _seg4diff(name: str, row: str, dataset: str) -> Preset:
    """An unsupervised row of Seg4Diff as its released code runs it (see ``SEG4DIFF_CHOICES``)."""
    params = {"geometry": "squash", "image_size": 1024}
    return Preset(name, SEG4DIFF_OWN, row, dataset, "per_image", {}, SD3_MEDIUM, "seg4diff", params, frame="label", choices=SEG4DIFF_CHOICES)  # fmt: skip


def _presets() -> list[Preset]:
    coco, t6 = "cocostuff27", "Table 6, "
    ade = (
        "ADE20K in DiffSeg's protocol (centre square, 512²) like COCO-Stuff; the full ADE20K release (ade20k_full) "
        "stands in for SceneParsing, its objects mapped to the 150 classes"
    )
    four = {"blocks": ("mid", "up"), "resolutions": (64, 32, 16, 8)}  # §3.1: "all available resolutions"
    presets = [
        _diffseg("diffseg-cocostuff27", DIFFSEG, "COCO-Stuff-27: DiffSeg, τ 1.1", coco, "per_image", {"acc": 72.5, "miou": 43.6}, 1.1),
        _diffseg("diffseg-cityscapes27", DIFFSEG, "Cityscapes: DiffSeg, τ 0.9 (DWC §4.5)", "cityscapes27", "per_image", {"acc": 76.0, "miou": 21.2}, 0.9),
        _diffseg("dwc-diffseg-globally-averaged", DWC, t6 + "DiffSeg, globally averaged", coco, "per_image", {"acc": 72.5, "f1": 58.5, "miou": 43.6}, 1.1),
        _diffseg("dwc-diffseg-per-image-avg", DWC, t6 + "DiffSeg, per-image averaged", coco, "per_image_avg", {"acc": 72.6, "f1": 71.1, "miou": 34.1}, 1.1),
        _diffseg("dwc-diffseg-oracle-merged", DWC, t6 + "DiffSeg, per-image averaged with the oracle merge", coco, "oracle_merged", {"acc": 79.2, "f1": 73.0, "miou": 60.6}, 1.1),
        _dwc("dwc-manc-ncut", "COCO-Stuff-27: MAN-C w/ NCut, k = 1, resolutions {64, 32, 16} (the best row; Table 3, three levels)", coco, "per_image", {"acc": 74.1, "f1": 60.8, "miou": 46.6}),
        _dwc("dwc-manc-ncut-four-levels", "Table 3, COCO-Stuff-27: MAN-C w/ NCut, k = 1, four levels {64, 32, 16, 8}", coco, "per_image", {"acc": 74.7, "f1": 60.6, "miou": 46.1}, (DWC_FOUR_LEVELS,), **four),
        _dwc("dwc-manc-ncut-two-levels", "Table 3, COCO-Stuff-27: MAN-C w/ NCut, k = 1, two levels {64, 32}", coco, "per_image", {"acc": 70.1, "f1": 56.4, "miou": 42.7}, resolutions=(64, 32)),
        _dwc("dwc-manc-ncut-one-level", "Table 3, COCO-Stuff-27: MAN-C w/ NCut, k = 1, one level {64}", coco, "per_image", {"acc": 63.9, "f1": 49.6, "miou": 36.4}, resolutions=(64,)),
        _dwc("dwc-random-walk", "Table 1, COCO-Stuff-27: Random Walk NCut on P, threshold 0.3 (baseline)", coco, "per_image", {"acc": 72.2, "f1": 56.9, "miou": 43.3}, (DWC_TABLE1_LEVELS, DWC_FOUR_LEVELS), graph="random_walk", stopping="threshold", threshold=0.3, **four),
        _dwc("dwc-dot-threshold", "Table 1, COCO-Stuff-27: dot-product adjacency A = P·Pᵀ, NCut threshold 0.4", coco, "per_image", {"acc": 74.0, "f1": 58.4, "miou": 44.0}, (DWC_TABLE1_LEVELS, DWC_FOUR_LEVELS), stopping="threshold", threshold=0.4, **four),
        _dwc("dwc-ncut-per-image-avg", t6 + "MAN-C w/ NCut, per-image averaged", coco, "per_image_avg", {"acc": 74.0, "f1": 73.3, "miou": 38.0}),
        _dwc("dwc-ncut-oracle-merged", t6 + "MAN-C w/ NCut, per-image averaged with the oracle merge", coco, "oracle_merged", {"acc": 83.6, "f1": 76.0, "miou": 64.5}),
        _dwc("dwc-cityscapes27", "Cityscapes: MAN-C w/ NCut", "cityscapes27", "per_image", {"miou": 22.0}),
        dataclasses.replace(_dwc("dwc-ade20k150", "ADE20K (150 classes): MAN-C w/ NCut", "ade20k150", "per_image", {"miou": 41.2}, (ade,)), readers=("ade20k_full",)),
    ]  # fmt: skip
    # Table 2: Scaled MinCut over all four levels, power walk k = 1..5 (k = 1 is also Table 3's four-level row).
    scaled_mincut = {
        1: {"acc": 45.9, "f1": 36.1, "miou": 23.8}, 2: {"acc": 67.0, "f1": 54.4, "miou": 40.7},
        3: {"acc": 71.2, "f1": 56.9, "miou": 42.4}, 4: {"acc": 70.7, "f1": 55.8, "miou": 41.1},
        5: {"acc": 70.0, "f1": 54.2, "miou": 39.6},
    }  # fmt: skip
    presets += [
        _dwc(f"dwc-scaled-mincut-k{k}", f"Table 2, COCO-Stuff-27: MAN-C w/ Scaled MinCut, power walk k = {k}, all four levels" + (" (= Table 3, four levels)" if k == 1 else ""), coco, "per_image", scaled_mincut[k], (DWC_FOUR_LEVELS,), stopping="manc_mincut", power=k, **four)
        for k in range(1, 6)
    ]  # fmt: skip
    presets += [
        _dwc("dwc-scaled-mincut-three-levels", "Table 3, COCO-Stuff-27: MAN-C w/ Scaled MinCut, k = 1, three levels {64, 32, 16}", coco, "per_image", {"acc": 42.0, "f1": 32.0, "miou": 20.6}, stopping="manc_mincut"),
        _dwc("dwc-scaled-mincut-two-levels", "Table 3, COCO-Stuff-27: MAN-C w/ Scaled MinCut, k = 1, two levels {64, 32}", coco, "per_image", {"acc": 37.2, "f1": 27.6, "miou": 17.0}, stopping="manc_mincut", resolutions=(64, 32)),
        _dwc("dwc-scaled-mincut-one-level", "Table 3, COCO-Stuff-27: MAN-C w/ Scaled MinCut, k = 1, one level {64}", coco, "per_image", {"acc": 36.1, "f1": 25.0, "miou": 15.3}, stopping="manc_mincut", resolutions=(64,)),
    ]  # fmt: skip
    dwc_rerun = "DWC Table 5: their re-run of the released code"
    presets += [
        _diffcut("diffcut-sd14-cocostuff27", DWC, "COCO-Stuff-27: DiffCut on SD 1.4, τ 0.2, without PAMR (DWC Table 5)", coco, {"miou": 31.3},
                 f"the number: {dwc_rerun} on SD 1.4 (τ 0.2 and α 10, as the DiffCut author advised them); the DiffCut paper has no SD 1.4 row"),
        _diffcut("diffcut-sd14-pamr-cocostuff27", DWC, "COCO-Stuff-27: DiffCut on SD 1.4, τ 0.2, with PAMR (10 iterations, dilations 1, 2, 4, 8; DWC Table 5)", coco, {"miou": 45.2},
                 f"the number: {dwc_rerun} on SD 1.4 with PAMR (τ 0.2, α 10, as the DiffCut author advised them)", pamr_iterations=10),
        _diffcut("diffcut-ssd1b-cocostuff27", DWC, "COCO-Stuff-27: DiffCut on SSD-1B, τ 0.5, without PAMR (DWC Table 5)", coco, {"miou": 46.1},
                 f"the number: {dwc_rerun} on SSD-1B without PAMR (Seg4Diff's re-run gives the same 46.1)", SSD1B, 0.5),
        _diffcut("diffcut-ssd1b-pamr-cocostuff27", DIFFCUT, "COCO-Stuff-27: DiffCut on SSD-1B, τ 0.5, with PAMR", coco, {"miou": 49.1},
                 "the number: the DiffCut paper (SSD-1B, with PAMR); DWC Table 5's re-run with PAMR gives the same 49.1", SSD1B, 0.5, pamr_iterations=10),
        _diffcut("diffcut-ssd1b-cityscapes27", SEG4DIFF, "Cityscapes: DiffCut on SSD-1B, τ 0.5, without PAMR (Seg4Diff's re-run)", "cityscapes27", {"miou": 28.4},
                 "the number: Seg4Diff's re-run of DiffCut on SSD-1B; our references do not say whether it applied PAMR: the "
                 "preset reads it as without, as the 46.1 that re-run gives for COCO-Stuff-27 is DWC's figure without PAMR", SSD1B, 0.5),
        _diffcut("diffcut-ssd1b-pamr-cityscapes27", DIFFCUT, "Cityscapes: DiffCut on SSD-1B, τ 0.5, with PAMR", "cityscapes27", {"miou": 30.6},
                 "the number: the DiffCut paper (SSD-1B, with PAMR)", SSD1B, 0.5, pamr_iterations=10),
    ]  # fmt: skip
    presets += [
        _diffsegmenter("diffsegmenter-voc2012", "voc2012", "val", 60.1, DIFFSEGMENTER_PARAMS,
                       _released("voc12", "dc892c063be0cd0c297296ac95de017ed1d7583418a02487ab768df18a71f2b3")),
        _diffsegmenter("diffsegmenter-context60", "context60", "val", 27.5, DIFFSEGMENTER_CONTEXT,
                       _released("voc10", "4b3a4807a961afd4beba1340e099db23b395e8f31a01d35a2cd049f4efe62aa3")),
        _diffsegmenter("diffsegmenter-coco-object", "coco_object", "val2014_5k", 37.9, DIFFSEGMENTER_COCO,
                       _released("coco", "2917fa1e5e4aa920a688f63b9d0ae4404a9b943a53ee79dc3cdfc86a990f517c")),
    ]  # fmt: skip
    openvoc = "open vocabulary: DiffCut on SSD-1B, τ 0.5, PAMR, segments named by CLIP (eval_diffcut_openvoc.py)"
    presets += [
        _diffcut_openvoc("diffcut-ssd1b-openvoc-voc2012", f"VOC (21 classes), {openvoc}", "voc2012", "val", "voc20"),
        _diffcut_openvoc("diffcut-ssd1b-openvoc-context60", f"Context (60 classes), {openvoc}", "context60", "val", "context59"),
        _diffcut_openvoc("diffcut-ssd1b-openvoc-coco-object", f"COCO-Object (81 classes, curated val2017), {openvoc}",
                         "coco_object_curated", "val2017", "coco80", clip_image_size=2048),
    ]  # fmt: skip
    presets += [
        _seg4diff("seg4diff-cocostuff27", "COCO-Stuff-27: Seg4Diff on SD3-medium, unsupervised", coco),
        _seg4diff("seg4diff-cityscapes27", "Cityscapes: Seg4Diff on SD3-medium, unsupervised", "cityscapes27"),
    ]
    return [
        preset if preset.split else dataclasses.replace(preset, split=SPLITS.get(preset.dataset)) for preset in presets
    ]


PRESETS: dict[str, Preset] = {preset.name: preset for preset in _presets()}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; a clear error lists them otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; --list-presets shows them: {', '.join(PRESETS)}") from None


def list_presets(names_only: bool = False) -> str:
    """Every preset's row, paper, dataset and settings, for ``--list-presets`` (resolving the
    settings loads the methods, and torch); ``names_only``: one line each, name, dataset and row."""
    if names_only:
        width = max(map(len, PRESETS))
        return "\n".join(f"{name:<{width}}  {preset.dataset:<12}  {preset.row}" for name, preset in PRESETS.items())
    return "\n\n".join("\n".join(preset.describe()) for preset in PRESETS.values())


def backbone_relation(run: str, preset: str) -> str:
    """``same`` (the preset's hub id), ``unverified`` (a local folder: its weights cannot be named
    here) or ``other`` (another hub id, or the in-process ``tiny``/``sd-v1-random``)."""
    from pathlib import Path

    if BACKBONE_ALIASES.get(run, run) == preset:
        return "same"
    if run not in RANDOM_BACKBONES and Path(run).expanduser().exists():
        return "unverified"
    return "other"


@dataclass(frozen=True)
class PresetMatch:
    """A run config that measures what ``preset`` measured. ``backbone``: how the run's backbone
    relates to the preset's (``backbone_relation``); only ``same`` makes the numbers comparable
    for certain."""

    preset: Preset
    backbone: str

    @property
    def same_backbone(self) -> bool:
        return self.backbone == "same"


def matching_presets(
    dataset: str,
    spec,
    frame: str,
    backbone: str,
    class_filter: str | None = None,
    tuned: Mapping[str, str] | Sequence[str] = (),
    split: str | None = None,
    captioner: str | None = None,
    score_size: int | None = None,
) -> list[PresetMatch]:
    """The presets whose settings a run config has: the same dataset and split (a stand-in reader,
    e.g. ade20k_full for ade20k150, has no split to compare), method, frame and score size, every
    extraction and method setting, class filter and captioner. ``split`` None means the reader's
    default. A preset with a tuned parameter matches only when ``tuned`` names that parameter
    chosen the way the preset chose it ({param: ``split`` | ``oracle``}; a bare list of names
    means ``split``)."""
    from dsseg.evaluation.datasets import reader_splits

    split = split or reader_splits(dataset)[1]
    tuned = dict(tuned) if isinstance(tuned, Mapping) else dict.fromkeys(tuned, "split")
    class_filter = filter_identity(class_filter)  # a candidate file read and hashed once, not per preset
    matches = []
    for preset in PRESETS.values():
        if not preset.accepts(dataset) or preset.method != spec.method:
            continue
        if dataset == preset.dataset and preset.split != split:
            continue
        if preset.tuning and tuned.get(preset.tuning.param) != preset.tuning.how:
            continue
        tuned_param = preset.tuning.param if preset.tuning else None
        if preset.key() == settings_key(spec, frame, class_filter, tuned_param, score_size, captioner):
            matches.append(PresetMatch(preset, backbone_relation(backbone, preset.backbone)))
    return matches


__all__ = [
    "PRESETS",
    "Preset",
    "PresetMatch",
    "Tuning",
    "backbone_relation",
    "get_preset",
    "list_presets",
    "matching_presets",
    "settings_key",
]
