"""Per-image candidate classes read from a file: DiffSegmenter's released lists, or a user's own.

Formats (by file name):
- ``.json`` as DiffSegmenter released them (``dataset/<set>/predict_syn_txt_0.8_img_0.97.json``):
  ``{"image_similarity": {key: [names]}, "text_similarity": {...}, "synonym_matching": {...}}``; an
  image's list is the union of ``image_similarity`` and ``text_similarity``, as the released
  ``read_json(..., choice=['image_similarity', 'text_similarity'])`` reads it (``synonym_matching``
  is not used);
- ``.json`` mapping image → names (``{"2007_000033": ["aeroplane"]}``);
- ``.jsonl`` lines ``{"image_id": ..., "classes": [...]}``, or ``.parquet`` with those columns.

Keys match an image by its id, by the file stem of its id, or by the file stem of its source
(the released VOC keys are absolute paths of the authors' machine; the COCO keys are file names
such as ``COCO_val2014_000000182611.jpg`` while COCO image ids are numbers).

The file is read once per model actor and held in memory (about 100 bytes per image): for tens of
millions of images put the lists in the manifest's ``classes`` column instead.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePosixPath

import numpy as np

from dsseg.model.vocabularies import DIFFSEGMENTER_SPELLINGS

RELEASED_KEYS = ("image_similarity", "text_similarity")  # unioned, in this order (duplicates dropped)
FORMATS = ".json (DiffSegmenter's released file, or {image: [names]}), .jsonl or .parquet (image_id, classes)"


class CandidatesError(ValueError):
    """A candidate file that cannot be read, or an image it does not list."""


def stem(key: str) -> str:
    """The file stem of an id, path or URI ("…/JPEGImages/2007_000033.jpg" → "2007_000033")."""
    return PurePosixPath(str(key).replace("\\", "/").rstrip("/")).stem


def file_digest(path: str) -> str:
    """The sha256 of a candidate file's bytes (what a preset checks it reads the released lists)."""
    from dsseg.io.sources import read_bytes

    return hashlib.sha256(read_bytes(path)).hexdigest()


def _released_lists(document: Mapping) -> dict[str, list[str]]:
    lists: dict[str, list[str]] = {}
    for part in RELEASED_KEYS:
        for key, names in document.get(part, {}).items():
            merged = lists.setdefault(str(key), [])
            merged.extend(name for name in names if name not in merged)
    return lists


def read_candidate_lists(path: str) -> dict[str, list[str]]:
    """Image key → its candidate class names, from a file in one of ``FORMATS``."""
    from dsseg.io.sources import read_bytes

    try:
        data = read_bytes(path)
    except Exception as error:  # noqa: BLE001 - any read failure is reported as the file's
        raise CandidatesError(f"cannot read the candidate file {path}: {type(error).__name__}: {error}") from None
    suffix = PurePosixPath(path).suffix.lower()
    try:
        if suffix == ".json":
            document = json.loads(data)
            if not isinstance(document, dict):
                raise CandidatesError(f"{path}: expected a JSON object, got {type(document).__name__}")
            if any(isinstance(document.get(part), dict) for part in RELEASED_KEYS):
                return _released_lists(document)
            return {str(key): [str(n) for n in names] for key, names in document.items()}
        if suffix == ".jsonl":
            rows = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
            return {str(row["image_id"]): [str(n) for n in row["classes"]] for row in rows}
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(io.BytesIO(data), columns=["image_id", "classes"])
            return {str(i): [str(n) for n in (c or [])] for i, c in zip(*table.to_pydict().values())}
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, CandidatesError):
            raise
        raise CandidatesError(f"{path}: not a candidate file ({FORMATS}): {type(error).__name__}: {error}") from None
    raise CandidatesError(f"{path}: unknown candidate file type {suffix!r}; expected {FORMATS}")


def class_aliases(name: str) -> set[str]:
    """``name`` and every DiffSegmenter spelling of it ("aeroplane" → {"aeroplane", "plane", "airplane"})."""
    return {name} | {table[name] for table in DIFFSEGMENTER_SPELLINGS.values() if name in table}


class CandidateFileFilter:
    """A class filter (``dsseg.model.class_filters``) keeping the candidates a file lists per image.

    An image with candidates (a vocabulary, or the dataset's classes) keeps those the file names,
    as written or in one of DiffSegmenter's spellings ("plane" keeps "aeroplane"; see
    ``dsseg.model.vocabularies.DIFFSEGMENTER_SPELLINGS``); an image without candidates takes the
    file's names as written. An image the file does not list is an error (that image's row
    becomes an error row): a wrong or partial file never passes as "no classes".
    """

    needs_keys = True
    supplies_classes = True

    def __init__(self, path: str) -> None:
        self.path = path
        lists = read_candidate_lists(path)
        self.lists = dict(lists)
        by_stem: dict[str, list[str] | None] = {}
        for key, names in lists.items():
            short = stem(key)
            by_stem[short] = names if by_stem.get(short, names) == names else None  # None: stems collide
        self.by_stem = by_stem

    def __len__(self) -> int:
        return len(self.lists)

    def names_of(self, image_id: str, source: str = "") -> list[str]:
        """The names the file lists for an image (by id, stem of the id, stem of the source)."""
        for found in (self.lists.get(image_id), self.by_stem.get(stem(image_id)), self.by_stem.get(stem(source))):
            if found is not None:
                return found
        raise CandidatesError(f"image {image_id!r} ({source}) is not listed in the candidate file {self.path}")

    def __call__(
        self,
        images: Sequence[np.ndarray],
        candidates: Sequence[Sequence[str]],
        keys: Sequence[tuple[str, str]] | None = None,
    ) -> list[list[str]]:
        if keys is None or len(keys) != len(images):
            raise CandidatesError(
                "the candidate-file filter needs each image's id: run it in a job or evaluation (not on bare arrays)"
            )
        return [self.keep(names, self.names_of(*key)) for names, key in zip(candidates, keys)]

    @staticmethod
    def keep(candidates: Iterable[str], listed: Sequence[str]) -> list[str]:
        """The ``candidates`` that ``listed`` names (all of ``listed`` when there are no candidates)."""
        candidates = list(candidates)
        if not candidates:
            return list(dict.fromkeys(listed))
        wanted = set(listed)
        return [name for name in candidates if class_aliases(name) & wanted]
