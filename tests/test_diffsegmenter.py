"""DiffSegmenter as its released code runs it (VCG-team/DiffSegmenter, open_vocabulary/*/ptp_stable_*.py):
the prompts, the "++" weighting (tests/test_openvocab.py), the class token read out, the refinement by
the class's own prompt run, and the order resize → min–max; the candidate lists it released."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import DATA

from dsseg.methods.openvocab import OpenVocabConfig, segment_openvocab
from dsseg.model.candidates import CandidateFileFilter, CandidatesError, read_candidate_lists
from dsseg.model.class_filters import load_class_filter
from dsseg.model.extract import AttentionExtractor, to_model_input
from dsseg.model.prompts import ImageTexts
from dsseg.segmenter import Segmenter
from dsseg.spec import MethodSpec

VOC = {"spellings": "diffsegmenter-voc20"}  # the released VOC script: the method's defaults and its spellings
COCO = {
    "class_template": "a photography of {class}",
    "class_tokens": "last",
    "participle_offset": 2,
    "spellings": "diffsegmenter-coco80",
}
CONTEXT = {**COCO, "participle_offset": 1, "spellings": "diffsegmenter-context59"}


def extractor_for(tiny, params: dict) -> AttentionExtractor:
    return AttentionExtractor(tiny, MethodSpec("openvocab", {"image_size": 64, **params}).resolved.extraction)


def read_tokens(tiny, plan) -> list[str]:
    """The words of the tokens a plan reads its class map from."""
    ids = tiny.tokenizer(plan.text).input_ids
    columns = plan.readout()[:, 0].nonzero()[:, 0].tolist()
    return [tiny.tokenizer.decode([ids[p]]).strip() for p in columns]


def test_prompts_name_classes_in_the_authors_spelling_continued_by_the_caption(tiny):
    voc = extractor_for(tiny, VOC)
    texts = ImageTexts(continuations={"aeroplane": "flying over the ocean", "person": "riding a horse"})
    plans = voc.prompt_plans(["aeroplane", "person", "dining table"], texts)
    assert [p.text for p in plans] == [
        "a photograph of plane flying over the ocean",
        "a photograph of people riding a horse",
        "a photograph of table",
    ]
    coco = extractor_for(tiny, COCO)
    (plan,) = coco.prompt_plans(["dining table"], ImageTexts(continuations={"dining table": "with food on it"}))
    assert plan.text == "a photography of diningtable with food on it"


def test_the_class_map_is_read_from_the_tokens_the_released_scripts_read(tiny):
    """VOC: the name's first token, with the next when the following word ends in "ing"; Context: the
    last token, with the next; COCO: the last token, with the one two on (as its script indexes)."""
    standing = ImageTexts(continuations={"traffic light": "standing on a street", "horse": "standing in a field"})
    still = ImageTexts(continuations={"traffic light": "on a street", "horse": "in a field"})
    cases = [
        (VOC, "horse", standing, ["horse", "standing"]),
        (VOC, "horse", still, ["horse"]),
        (VOC, "traffic light", standing, ["traffic", "light"]),
        (CONTEXT, "traffic light", standing, ["light", "standing"]),
        (COCO, "traffic light", standing, ["light", "on"]),
        (COCO, "traffic light", still, ["light"]),
        ({"class_tokens": "mean", "class_template": "a photograph of a {class}"}, "traffic light", still, ["traffic", "light"]),
    ]  # fmt: skip
    for params, name, texts, expected in cases:
        (plan,) = extractor_for(tiny, params).prompt_plans([name], texts)
        assert read_tokens(tiny, plan) == expected, (params, name, plan.text)
        weights = plan.readout()[:, 0]
        assert weights.sum().item() == pytest.approx(1.0) and len(set(weights[weights > 0].tolist())) == 1


def test_the_conditional_caption_is_asked_with_the_spelled_prompt(tiny, bsds_image):
    from helpers import WrittenCaptions

    captioner = WrittenCaptions(continuation="flying over a city")
    spec = MethodSpec("openvocab", {"image_size": 64, "classes": ["aeroplane"], "descriptors": "caption", **VOC})
    segmenter = Segmenter(tiny, spec, captioner=captioner)
    ((result,),) = segmenter.segment(segmenter.batch([bsds_image]))
    assert captioner.calls == [("complete", [(0, "a photograph of plane")])]
    assert result.caption == "a photograph of plane flying over a city"
    assert set(result.names) <= {"background", "aeroplane", "ignore"}  # segments keep the dataset's name


def released_scores(cross: dict, self_attention: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The released code's steps for one class, written out: each level's map bilinearly to the
    largest grid, min–max, weighted 0.3/0.5/0.1/0.1 (coarsest first) and summed; times the class's
    own self-attention; bilinearly resized to the image's size; min–max."""
    grids = sorted(cross, key=lambda g: g[0] * g[1])
    target = grids[-1]
    fused = torch.zeros(target[0] * target[1], dtype=torch.float64)
    for grid, weight in zip(grids, (0.3, 0.5, 0.1, 0.1)):
        level = F.interpolate(cross[grid].double().reshape(1, 1, *grid), size=target, mode="bilinear")[0, 0]
        fused += weight * ((level - level.min()) / (level.max() - level.min())).reshape(-1)
    refined = (self_attention.double() @ fused).reshape(1, 1, *target)
    resized = F.interpolate(refined, size=size, mode="bilinear", align_corners=False)[0, 0]
    return (resized - resized.min()) / (resized.max() - resized.min())


def test_each_class_is_refined_by_its_own_prompts_self_attention_then_resized_then_normalised(tiny, bsds_image):
    segmenter = Segmenter(tiny, MethodSpec("openvocab", {"image_size": 128, **VOC}))
    pixels, geometry = segmenter.prepare(bsds_image)
    images = to_model_input(pixels[None], tiny.device, tiny.dtype)
    extractor = segmenter.groups[0].extractor
    size = (321, 481)  # the image's own size: labels come at it
    both = extractor(images, classes=[["horse", "grass"]], sizes=[size])
    (result,) = segment_openvocab(both, OpenVocabConfig(background_threshold=0.6))
    assert tuple(result.labels.shape) == size
    largest = max(both.self_attention, key=lambda g: g[0] * g[1])
    channels = [torch.full(size, 0.6, dtype=torch.float64)]
    for c, name in enumerate(["horse", "grass"]):
        alone = extractor(images, classes=[[name]])  # the class's own prompt run, by itself
        own = alone.self_attention[largest][0]
        cross = {grid: maps[c] for grid, maps in both.class_attention[0].items()}
        for grid in cross:  # the same prompt, the same maps, whichever run
            torch.testing.assert_close(alone.class_attention[0][grid][0], cross[grid], atol=1e-5, rtol=1e-4)
        channels.append(released_scores(cross, own, size))
        mean = released_scores(cross, both.self_attention[largest][0], size)
        assert (channels[-1] - mean).abs().max() > 1e-4  # the mean over both prompts would differ
    expected = torch.stack(channels).argmax(0)
    assert (result.labels == expected).float().mean() > 0.999  # float32 against float64: ties at most


def test_released_candidate_lists_are_the_union_of_image_and_text_similarity(tmp_path):
    path = tmp_path / "predict_syn_txt_0.8_img_0.97.json"
    path.write_text(
        json.dumps(
            {
                "synonym_matching": {"/data/VOC2012/JPEGImages/2007_000033.jpg": ["cat"]},
                "image_similarity": {"/data/VOC2012/JPEGImages/2007_000033.jpg": ["plane", "people"]},
                "text_similarity": {"/data/VOC2012/JPEGImages/2007_000033.jpg": ["people", "monitor"]},
            }
        )
    )
    assert read_candidate_lists(str(path)) == {
        "/data/VOC2012/JPEGImages/2007_000033.jpg": ["plane", "people", "monitor"]
    }
    kept = load_class_filter(f"candidates:{path}")
    voc = ["aeroplane", "bicycle", "cat", "person", "tv monitor", "dining table"]
    assert kept([None], [voc], keys=[("2007_000033", "/voc/JPEGImages/2007_000033.jpg")]) == [
        ["aeroplane", "person", "tv monitor"]
    ]  # matched by file stem, the authors' spellings mapped to the dataset's names; synonym_matching unused
    assert kept([None], [[]], keys=[("2007_000033", "x")]) == [["plane", "people", "monitor"]]  # no vocabulary
    with pytest.raises(CandidatesError, match="not listed"):
        kept([None], [voc], keys=[("2008_000002", "/voc/2008_000002.jpg")])
    with pytest.raises(CandidatesError, match="image's id"):
        kept([None], [voc])


def test_user_candidate_files_in_jsonl_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "c.jsonl").write_text('{"image_id": "a", "classes": ["horse"]}\n{"image_id": "b", "classes": []}\n')
    pq.write_table(pa.table({"image_id": ["a", "b"], "classes": [["horse"], []]}), tmp_path / "c.parquet")
    for name in ("c.jsonl", "c.parquet"):
        found = CandidateFileFilter(str(tmp_path / name))
        assert found([None, None], [["horse", "grass"], ["horse"]], keys=[("a", ""), ("b", "")]) == [["horse"], []]
    (tmp_path / "c.txt").write_text("a horse")
    with pytest.raises(CandidatesError, match="unknown candidate file type"):
        CandidateFileFilter(str(tmp_path / "c.txt"))


def test_the_shipped_released_lists_cover_the_voc_val_split():
    """The copy in tests/data of DiffSegmenter's VOC 2012 list (a slice) maps to VOC classes only."""
    path = DATA / "diffsegmenter" / "voc12_candidates_head.json"
    found = CandidateFileFilter(str(path))
    from dsseg.model.vocabularies import VOC20

    for key in list(found.lists)[:50]:
        (kept,) = found([None], [list(VOC20)], keys=[(key.rsplit("/", 1)[-1].removesuffix(".jpg"), "")])
        assert kept and set(kept) <= set(VOC20)
    assert np.mean([len(v) for v in found.lists.values()]) >= 1


def test_a_job_reads_each_images_classes_from_a_candidate_file(tmp_path):
    """``--candidates FILE`` in a job: images take the file's classes (no vocabulary needed); an image
    the file does not list becomes an error row, the others are segmented."""
    import pyarrow as pa
    from helpers import IMAGES

    from dsseg.commands.job import build_parser as job_parser
    from dsseg.commands.job import job_from_args
    from dsseg.io.sources import list_inputs
    from dsseg.job.config import SegmentJob
    from dsseg.job.decode import decode_batch
    from dsseg.job.model_stage import SegmentWorker

    listing = tmp_path / "lists.json"
    listing.write_text(json.dumps({"135069.jpg": ["horse", "grass"], "horses/horse001": ["horse"]}))
    argv = ["--input", str(IMAGES), "--output", str(tmp_path / "out"), "--method", "openvocab", "--backbone", "tiny"]
    job = job_from_args(job_parser().parse_args([*argv, "--param", "image_size=64", "--candidates", str(listing)]))
    assert job.class_filter == f"candidates:{listing}"
    job.check_classes([{"image_id": "a", "classes": None}])  # the file gives the classes
    with pytest.raises(ValueError, match="not both"):
        job_from_args(job_parser().parse_args([*argv, "--candidates", str(listing), "--class-filter", "caption"]))
    with pytest.raises(ValueError, match="no such file"):
        SegmentJob(
            input=str(IMAGES), output=str(tmp_path / "x"), class_filter=f"candidates:{tmp_path / 'none.json'}"
        ).check_paths()
    wanted = {"135069.jpg", "horses/horse001.jpg", "frankfurt_000000_000294_leftImg8bit.png"}
    items = [item | {"configs": job.config_ids()} for item in list_inputs(job.input) if item["image_id"] in wanted]
    batch = decode_batch(pa.Table.from_pylist(items), job.preparation, job.max_pixels, job.max_image_side)
    rows = {row["image_id"]: row for row in SegmentWorker(job)(batch).to_pylist()}
    assert rows["frankfurt_000000_000294_leftImg8bit.png"]["status"] == "error"
    assert "not listed in the candidate file" in rows["frankfurt_000000_000294_leftImg8bit.png"]["error"]
    assert rows["135069.jpg"]["status"] == rows["horses/horse001.jpg"]["status"] == "ok"
    assert set(rows["135069.jpg"]["names"]) <= {"background", "horse", "grass", "ignore"}
    assert set(rows["horses/horse001.jpg"]["names"]) <= {"background", "horse", "ignore"}
    assert (rows["135069.jpg"]["input_h"], rows["135069.jpg"]["input_w"]) == (321, 321)  # at its centre square's size
