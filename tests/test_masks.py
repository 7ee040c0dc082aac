import numpy as np
import pytest
from helpers import GROUND_TRUTH
from PIL import Image
from pycocotools import mask as mask_utils
from scipy.io import loadmat

from dsseg.io.masks import decode_segments, encode_labels, rle_to_mask


def _real_label_maps() -> dict[str, np.ndarray]:
    bsds = loadmat(GROUND_TRUTH / "135069.mat")["groundTruth"]
    horse = np.asarray(Image.open(GROUND_TRUTH / "horse001_figure_ground.jpg").convert("L")) > 127
    return {
        "bsds-annotator-0": bsds[0, 0]["Segmentation"][0, 0].astype(np.int64),
        "bsds-annotator-1": bsds[0, 1]["Segmentation"][0, 0].astype(np.int64),
        "camvid": np.asarray(Image.open(GROUND_TRUTH / "0001TP_009990.png")).astype(np.int64),
        "cityscapes": np.asarray(Image.open(GROUND_TRUTH / "frankfurt_000000_000294_gtFine_labelIds.png")).astype(
            np.int64
        ),
        "horse": horse.astype(np.int64),
    }


@pytest.mark.parametrize("name", sorted(_real_label_maps()))
def test_rle_round_trip_on_real_ground_truth(name):
    labels = _real_label_maps()[name]
    segments = encode_labels(labels)
    assert [s["segment_id"] for s in segments] == np.unique(labels).tolist()
    assert sum(s["area"] for s in segments) == labels.size
    assert np.array_equal(decode_segments(segments), labels)
    for segment in segments[:5]:
        binary = np.asfortranarray((labels == segment["segment_id"]).astype(np.uint8))
        coco = mask_utils.encode(binary)
        assert segment["rle"]["counts"] == coco["counts"].decode("ascii")
        assert segment["rle"]["size"] == list(labels.shape)
        assert segment["bbox"] == mask_utils.toBbox(coco).tolist()
        assert segment["area"] == int(binary.sum())
        assert np.array_equal(rle_to_mask(segment["rle"]), binary.astype(bool))


def test_single_segment_and_single_pixel_maps():
    whole = encode_labels(np.zeros((3, 5), dtype=np.int32))
    assert len(whole) == 1 and whole[0]["area"] == 15 and whole[0]["bbox"] == [0.0, 0.0, 5.0, 3.0]
    assert encode_labels(np.array([[7]]))[0]["segment_id"] == 7


def test_decode_rejects_segments_that_do_not_partition():
    labels = np.array([[0, 0, 1], [1, 2, 2]])
    segments = encode_labels(labels)
    with pytest.raises(ValueError, match="partition"):
        decode_segments(segments[:2])
    overlapping = segments + [dict(segments[0], segment_id=9)]
    with pytest.raises(ValueError, match="covered twice"):
        decode_segments(overlapping)
    with pytest.raises(ValueError, match="2-D"):
        encode_labels(np.zeros((2, 2, 2)))


def test_an_error_rows_empty_segments_say_what_they_are():
    with pytest.raises(ValueError, match="an error row has none"):
        decode_segments([])


def test_hundreds_of_segments_encode_with_their_areas_and_boxes():
    """pycocotools' own area() overflows a uint8 from 256 masks on; areas come from the runs."""
    labels = np.random.default_rng(0).integers(0, 300, (61, 83))
    segments = encode_labels(labels)
    assert [s["segment_id"] for s in segments] == list(range(300))
    for segment in segments:
        mask = labels == segment["segment_id"]
        rows, cols = np.nonzero(mask)
        assert segment["area"] == mask.sum() and np.array_equal(rle_to_mask(segment["rle"]), mask)
        assert segment["bbox"] == [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]


def test_rows_read_with_pandas_decode_like_pylist_rows(tmp_path):
    """pandas gives a row's segments as a NumPy object array and each size as an array."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dsseg.io.schema import SEGMENT_TYPE

    labels = _real_label_maps()["camvid"]
    table = pa.table({"segments": pa.array([encode_labels(labels)], pa.list_(SEGMENT_TYPE))})
    pq.write_table(table, tmp_path / "part.parquet")
    row = pq.read_table(tmp_path / "part.parquet").to_pandas().segments[0]
    assert isinstance(row, np.ndarray) and isinstance(row[0]["rle"]["size"], np.ndarray)
    assert np.array_equal(decode_segments(row), labels)
    with pytest.raises(ValueError, match="no segments"):
        decode_segments(np.array([], dtype=object))
