"""Class filters as a run names them (``--class-filter``, ``class_filter:`` in a run file): the
spec strings, checked and read without loading a filter (``dsseg.model.class_filters`` loads them).

Forms (``FILTER_FORMS``): ``clip:MODEL``, ``caption``, ``caption+clip:MODEL``, ``candidates:FILE``
(the per-image candidate lists of a file, ``--candidates FILE``) or ``package.module:factory``.
No model code here: a job checks its filter before any model loads, and ``dsseg --help`` stays quick.
"""

from __future__ import annotations

from pathlib import Path

from dsseg.errors import ConfigError

FILTER_FORMS = "clip:MODEL, caption, caption+clip:MODEL, candidates:FILE or package.module:factory"
CANDIDATES_PREFIX = "candidates:"  # the class filter of per-image candidate lists from a file


def check_filter_spec(spec: str) -> None:
    """Raise a ``ConfigError`` unless the class filter ``spec`` has one of the ``FILTER_FORMS``
    (``dsseg.model.class_filters.load_class_filter``)."""
    _, sep, target = spec.partition(":")
    if spec != "caption" and (not sep or not target):
        raise ConfigError("class_filter", f"expects {FILTER_FORMS}; got {spec!r}")


def filter_reads_captions(spec: str | None) -> bool:
    """Whether the class filter ``spec`` reads captions (``caption``, ``caption+clip:MODEL``)."""
    return bool(spec) and (spec == "caption" or spec.startswith("caption+"))


def filter_may_read_captions(spec: str | None) -> bool:
    """Whether the class filter ``spec`` may read captions: a caption filter, or a factory's
    (``package.module:factory``; it reads them when it sets ``needs_captions``)."""
    return filter_reads_captions(spec) or (
        bool(spec) and spec.partition(":")[0] not in ("clip", "caption+clip", "candidates")
    )


def filter_supplies_classes(spec: str | None) -> bool:
    """Whether the class filter ``spec`` gives images their candidates (``candidates:FILE``)."""
    return bool(spec) and spec.startswith(CANDIDATES_PREFIX)


def check_candidates_file(spec: str | None) -> None:
    """Raise a ``ConfigError`` when ``spec`` is ``candidates:FILE`` with a local FILE that does not exist."""
    if filter_supplies_classes(spec):
        from dsseg.io.sources import is_uri

        listing = spec.removeprefix(CANDIDATES_PREFIX)
        if not is_uri(listing) and not Path(listing).is_file():
            raise ConfigError("candidates", f"{listing}: no such file (the per-image candidate class lists)")


def candidates_filter(class_filter: str | None, candidates: str | None) -> str | None:
    """The class filter of a run given ``--class-filter`` and ``--candidates FILE`` (which is
    ``candidates:FILE``, checked to exist); a ``ConfigError`` when both are given."""
    if not candidates:
        return class_filter
    if class_filter not in (None, "", "none"):
        raise ConfigError("candidates", "is the class filter candidates:FILE: give it or --class-filter, not both")
    spec = f"{CANDIDATES_PREFIX}{candidates}"
    check_candidates_file(spec)
    return spec


__all__ = [
    "CANDIDATES_PREFIX",
    "FILTER_FORMS",
    "candidates_filter",
    "check_candidates_file",
    "check_filter_spec",
    "filter_may_read_captions",
    "filter_reads_captions",
    "filter_supplies_classes",
]
