"""The explorer's engine without a browser: cached forwards, re-segmentation equal to a fresh one, the
NCut tree cut, the bounded memo, the output browser's index and queries, and the command's messages."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import IMAGES, ROOT

from dsseg.api import segment_image
from dsseg.benchmark.explore import blocky_labels, synthetic_output
from dsseg.explore.outputs import OutputBrowser, OutputError
from dsseg.explore.session import BoundedMemo, ExploredImage, ImageExplorer, spec_from_controls
from dsseg.io.images import load_rgb
from dsseg.io.masks import decode_segments
from dsseg.io.results import read_results
from dsseg.methods.base import memoised
from dsseg.methods.ncut import cut_hierarchy, cut_tree, tree_depth
from dsseg.spec import MethodSpec

SMALL = {"image_size": 256}  # 32² latents: quick forwards on CPU


@pytest.fixture(scope="module")
def explorer(tiny):
    explorer = ImageExplorer("tiny", device="cpu", params=SMALL)
    explorer.backbones = {"tiny": tiny}  # the session's tiny backbone, not a second copy
    return explorer


@pytest.fixture(scope="module")
def photo() -> ExploredImage:
    return ExploredImage.of(load_rgb(str(IMAGES / "135069.jpg")), "135069")


def test_controls_change_only_the_method_and_reuse_the_forward(explorer, photo, tiny):
    first = explorer.view(photo, MethodSpec("diffseg", {**SMALL, "kl_threshold": 1.1}))
    again = explorer.view(photo, MethodSpec("diffseg", {**SMALL, "kl_threshold": 0.7, "iterations": 2}))
    assert not first.forward_cached and again.forward_cached and again.timings_ms["forward"] == 0
    # The same labels as a fresh segmentation with those parameters (memoised KL distances included).
    fresh = segment_image(photo.rgb, "diffseg", backbone=tiny, **SMALL, kl_threshold=0.7, iterations=2)
    assert np.array_equal(again.segmentation.labels, fresh.labels)
    assert again.segmentation.labels.shape == photo.rgb.shape[:2]
    # Another method's extraction (DDIM inversion) is another forward, cached in turn.
    ncut = explorer.view(photo, MethodSpec("ncut", SMALL))
    assert not ncut.forward_cached and explorer.view(photo, MethodSpec("ncut", {**SMALL, "power": 2})).forward_cached


def test_tree_depth_cuts_the_cached_tree(explorer, photo, tiny):
    whole = explorer.view(photo, MethodSpec("ncut", SMALL))
    assert whole.max_depth == whole.depth == tree_depth(whole.segmentation.parents) >= 2
    fresh = segment_image(photo.rgb, "ncut", backbone=tiny, **SMALL)
    assert np.array_equal(whole.segmentation.labels, fresh.labels)
    for depth in range(whole.max_depth + 1):
        cut = explorer.view(photo, MethodSpec("ncut", SMALL), depth=depth)
        assert cut.forward_cached and cut.depth == depth
        expected = cut_hierarchy(whole.segmentation.labels, whole.segmentation.parents, depth)
        assert np.array_equal(cut.segmentation.labels, expected)
        assert cut.segmentation.num_segments <= 2**depth
    with pytest.raises(ValueError, match="depth cuts NCut"):
        explorer.view(photo, MethodSpec("diffseg", SMALL), depth=1)


def test_cut_tree_gives_the_merged_segments_parents():
    # leaves: 4 and 5 (children of 2), 6 and 14 and 15 (7 split into 14, 15; 6 a leaf of 3)
    parents = [2, 2, 3, 7, 7]
    labels = np.arange(5)[None, :].repeat(2, 0)
    labels_1, parents_1 = cut_tree(labels, parents, 1)
    assert labels_1.tolist()[0] == [0, 0, 1, 1, 1] and parents_1 == [1, 1]
    labels_2, parents_2 = cut_tree(labels, parents, 2)
    assert labels_2.tolist()[0] == [0, 1, 2, 3, 3] and parents_2 == [2, 2, 3, 3]
    assert cut_tree(labels, parents, 0)[1] == [None]
    assert np.array_equal(cut_tree(labels, parents, 3)[0], labels) and cut_tree(labels, parents, 3)[1] == parents
    assert tree_depth(parents) == 3 and tree_depth([None]) == 0


def test_openvocab_threshold_reuses_class_scores_and_names_by_classes(explorer, photo, tiny):
    classes = "horse, grass,sky"
    spec = spec_from_controls("openvocab", 1.1, 3, False, 1, "manc_ncut", 0.5, 0.3, classes, "none", extra=SMALL)
    assert spec.params["classes"] == ("horse", "grass", "sky") and spec.params["background_threshold"] == 0.3
    low = explorer.view(photo, spec)
    high = explorer.view(
        photo, spec_from_controls("openvocab", 1.1, 3, False, 1, "manc_ncut", 0.5, 0.9, classes, "none", extra=SMALL)
    )
    assert high.forward_cached
    assert (high.segmentation.labels == 0).sum() >= (low.segmentation.labels == 0).sum()  # more background
    fresh = segment_image(
        photo.rgb, "openvocab", backbone=tiny, classes=["horse", "grass", "sky"], background_threshold=0.9, **SMALL
    )
    assert np.array_equal(high.segmentation.labels, fresh.labels) and high.segmentation.names == fresh.names
    named = explorer.view(
        photo, spec_from_controls("diffseg", 0.9, 3, False, 1, "manc_ncut", 0.5, 0.5, classes, "classes", extra=SMALL)
    )
    assert set(named.segmentation.names) <= {"horse", "grass", "sky"}
    assert (
        "classes" not in spec_from_controls("diffseg", 0.9, 3, False, 1, "manc_ncut", 0.5, 0.5, classes, "none").params
    )
    assert spec_from_controls("ncut", 0, 0, False, 2, "threshold", 0.4, 0, "", "caption").params == {
        "power": 2, "stopping": "threshold", "threshold": 0.4, "naming": "caption"
    }  # fmt: skip


def test_view_downloads_are_the_labels_and_rles(explorer, photo):
    from pycocotools import mask as mask_utils

    view = explorer.view(photo, MethodSpec("diffseg", {**SMALL, "kl_threshold": 0.8}))
    import io

    from PIL import Image

    png = np.asarray(Image.open(io.BytesIO(view.label_png())))
    assert png.dtype == np.uint16 and np.array_equal(png, view.segmentation.labels)
    record = json.loads(view.rle_json())
    assert (record["height"], record["width"]) == photo.rgb.shape[:2] and record["params"]["kl_threshold"] == 0.8
    decoded = sum(
        mask_utils.decode({"size": s["rle"]["size"], "counts": s["rle"]["counts"].encode()}) * s["segment_id"]
        for s in record["segments"]
    )
    assert np.array_equal(decoded, view.segmentation.labels)
    legend = view.legend()
    assert sum(entry.area for entry in legend) == photo.rgb.shape[0] * photo.rgb.shape[1]
    assert abs(sum(entry.fraction for entry in legend) - 1) < 1e-9


def test_cache_is_bounded(tiny, photo):
    explorer = ImageExplorer("tiny", device="cpu", capacity=1, params={"image_size": 64})
    explorer.backbones = {"tiny": tiny}
    other = ExploredImage.of(photo.rgb[::-1].copy())
    explorer.view(photo, MethodSpec("diffseg", {"image_size": 64}))
    explorer.view(other, MethodSpec("diffseg", {"image_size": 64}))
    assert len(explorer.forwards) == 1
    assert not explorer.view(photo, MethodSpec("diffseg", {"image_size": 64})).forward_cached  # evicted
    with pytest.raises(ValueError, match="capacity"):
        ImageExplorer(capacity=0)


def test_memo_is_least_recently_used_and_absent_in_jobs():
    memo = BoundedMemo(limit=2)
    memo["a"], memo["b"] = 1, 2
    _ = memo["a"]  # a is now the most recent
    memo["c"] = 3
    assert list(memo) == ["a", "c"]

    class Bundle:
        memo = None

    calls = []
    assert memoised(Bundle(), "k", lambda: calls.append(1) or 5) == 5
    assert memoised(Bundle(), "k", lambda: calls.append(1) or 5) == 5 and len(calls) == 2  # no memo: computed again
    bundle = Bundle()
    bundle.memo = {}
    memoised(bundle, "k", lambda: calls.append(1) or 5)
    memoised(bundle, "k", lambda: calls.append(1) or 5)
    assert len(calls) == 3


def test_memo_does_not_change_job_results(tiny, photo):
    """A bundle with a memo segments exactly as one without, for every attention method, twice over."""
    import dataclasses

    from dsseg.methods import get_method
    from dsseg.segmenter import Segmenter

    for method, params in (("diffseg", {"kl_threshold": 0.8}), ("ncut", {"power": 2})):
        segmenter = Segmenter(tiny, MethodSpec(method, {**SMALL, **params}))
        bundle, _ = segmenter.forward(segmenter.batch([photo.rgb]))
        plain = get_method(method).segment(bundle, segmenter.config.params, None)[0]
        kept = dataclasses.replace(bundle, memo={})
        for _ in range(2):
            again = get_method(method).segment(kept, segmenter.config.params, None)[0]
            assert torch.equal(plain.labels, again.labels)
        assert kept.memo  # something was kept


@pytest.fixture(scope="module")
def job_output(tmp_path_factory):
    folder = tmp_path_factory.mktemp("job")
    images = [
        (name, str(IMAGES / name), *load_rgb(str(IMAGES / name)).shape[:2])
        for name in ("135069.jpg", "horses/horse001.jpg")
    ]
    synthetic_output(folder, images, rows_per_config=40, rows_per_file=16, errors_every=10)
    return folder


def test_output_browser_indexes_queries_and_pages(job_output):
    browser = OutputBrowser(str(job_output))
    assert browser.index.num_rows == 80 and browser.score_columns == ("miou", "acc")
    assert [c.title for c in browser.configs] == ["diffseg kl_threshold=1.1", "diffseg kl_threshold=0.9"]
    assert browser.reasons == ["corrupt"]
    first, second = (c.config_id for c in browser.configs)
    scores = {
        r["image_id"]: r["miou"]
        for r in pq.read_table(job_output / "per_image.parquet").to_pylist()
        if r["config_id"] == first
    }
    worst = browser.query(first, "miou")
    ranked = sorted((v, k) for k, v in scores.items() if v is not None)
    assert worst.column("image_id").to_pylist()[: len(ranked)] == [k for _, k in ranked]
    assert worst.column("miou").to_pylist()[-4:] == [None] * 4  # error rows (no score) last
    errors = browser.query(first, status="error", reason="corrupt")
    assert errors.num_rows == 4 and set(errors.column("segments").to_pylist()) == {0}
    many = browser.query(first, "segments", descending=True, status="ok", min_segments=8, max_segments=8)
    assert many.num_rows and set(many.column("segments").to_pylist()) == {8}
    with pytest.raises(ValueError, match="cannot sort by"):
        browser.query(first, "pri")
    page = worst.slice(5, 12)
    rows = browser.rows(page)
    assert [r["image_id"] for r in rows] == page.column("image_id").to_pylist()
    direct = {
        r["image_id"]: r
        for r in read_results(str(job_output / "run"), first, image_ids=[r["image_id"] for r in rows]).to_pylist()
    }
    assert all(r == direct[r["image_id"]] for r in rows)
    beside = browser.rows_for(second, [r["image_id"] for r in rows])
    assert set(beside) == {r["image_id"] for r in rows} and all(r["config_id"] == second for r in beside.values())
    ok = next(r for r in rows if r["status"] == "ok")
    assert browser.image(ok).shape[:2] == decode_segments(ok["segments"]).shape == (ok["height"], ok["width"])
    assert len(np.unique(decode_segments(ok["segments"]))) == len(ok["segments"])


def test_output_browser_finds_evaluation_layout_and_model_frame_images(job_output, tmp_path):
    browser = OutputBrowser(str(job_output))  # an evaluation: rows in run/, scores beside it
    assert browser.run.endswith("run") and browser.scores_path.endswith("per_image.parquet")
    assert OutputBrowser(str(job_output / "run")).scores_path is None  # a job folder: no scores unless given
    given = OutputBrowser(str(job_output / "run"), scores=str(job_output / "per_image.parquet"))
    assert given.score_columns == ("miou", "acc")
    with pytest.raises(OutputError, match="holds no segment-job rows"):
        OutputBrowser(str(tmp_path / "nothing"))
    with pytest.raises(OutputError, match="does not exist"):
        OutputBrowser(str(job_output), scores=str(tmp_path / "missing.parquet"))
    not_parquet = tmp_path / "scores.parquet"
    not_parquet.write_text("image_id,miou\n")
    with pytest.raises(OutputError, match="cannot read per-image scores"):
        OutputBrowser(str(job_output), scores=str(not_parquet))
    # A record repeated (a re-scored image): the last one counts, and the index keeps one row per output row.
    scores = pq.read_table(job_output / "per_image.parquet")
    first_id = scores.column("image_id")[0].as_py()
    again = scores.slice(0, 1).set_column(3, "miou", pa.array([123.0]))
    pq.write_table(pa.concat_tables([scores, again]), tmp_path / "twice.parquet")
    twice = OutputBrowser(str(job_output), scores=str(tmp_path / "twice.parquet"))
    assert twice.index.num_rows == 80
    best = twice.query(scores.column("config_id")[0].as_py(), "miou", descending=True).slice(0, 1).to_pylist()[0]
    assert best["image_id"] == first_id and best["miou"] == 123.0

    # Masks written in the model frame (the 512² centre crop) are shown over the model input.
    row = browser.rows(browser.query(browser.configs[0].config_id, status="ok").slice(0, 1))[0]
    from dsseg.io.masks import encode_labels

    model_row = {
        **row,
        "segments": [
            dict(s, label=None, score=None, parent=None) for s in encode_labels(blocky_labels(512, 512, 4, 0))
        ],
    }
    assert browser.image(model_row).shape == (512, 512, 3)


def test_output_browser_reads_images_from_tar_shards(job_output, tmp_path):
    import tarfile

    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w") as tar:
        tar.add(IMAGES / "135069.jpg", arcname="photos/135069.jpg")
    browser = OutputBrowser(str(job_output))
    row = browser.rows(browser.query(browser.configs[0].config_id, status="ok").slice(0, 1))[0]
    from_tar = {**row, "source": str(shard), "image_id": "photos/135069.jpg", "segments": []}
    assert np.array_equal(browser.image(from_tar), load_rgb(str(IMAGES / "135069.jpg")))
    with pytest.raises(OutputError, match="is not a member"):
        browser.image({**from_tar, "image_id": "photos/other.jpg"})


def test_explore_command_messages(tmp_path, monkeypatch):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "dsseg.cli", "explore", *args], capture_output=True, text=True, cwd=ROOT, timeout=120
        )

    missing = run(str(tmp_path))
    assert (
        missing.returncode == 2 and "holds no segment-job rows" in missing.stderr and "Traceback" not in missing.stderr
    )
    bad = run("--param", "kl_threshold=0.5")
    assert bad.returncode == 2 and "--param kl_threshold: is not an extraction parameter" in bad.stderr
    assert run("--cache-images", "0").returncode == 2
    assert "--images" in run("--help").stdout
    nowhere = run(str(tmp_path / "nowhere"))
    assert nowhere.returncode == 2 and nowhere.stderr.startswith(
        f"dsseg explore: error: OUTPUT: {tmp_path / 'nowhere'}: no such folder"
    )
    from dsseg.commands import main

    monkeypatch.setitem(sys.modules, "gradio", None)  # as if the explore extra were not installed
    monkeypatch.delitem(sys.modules, "dsseg.explore.app", raising=False)
    assert main(["explore"]) == 2
