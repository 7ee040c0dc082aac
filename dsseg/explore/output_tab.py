"""The explorer's Job output tab: a job's (or an evaluation's) rows opened, queried by config,
sorted and filtered by per-image score, error reason or segment count, paged as tiles, and one
image's segments shown on click (``dsseg.explore.outputs`` reads the output)."""

import gradio as gr
import numpy as np
import pyarrow.compute as pc

from dsseg.explore.outputs import OutputBrowser
from dsseg.explore.render import highlight, segment_at, segment_text, side_by_side, thumbnail
from dsseg.io.masks import decode_segments
from dsseg.io.overlay import overlay

NO_CONFIG = "(none)"
REOPEN = "open the output (another tab opened others since)"
OPEN_OUTPUTS = 2  # outputs whose index stays in memory; opening a third drops the least recently opened
ALL_ROWS = "all rows"
PAGE_SIZE = 12


class OutputTab:
    """The Job output tab's handlers: open, query, page, select an image, click a segment."""

    def __init__(self, browser: OutputBrowser | None, page_size: int = PAGE_SIZE) -> None:
        self.browsers: dict[str, OutputBrowser] = {}
        if browser is not None:
            self.browsers[browser.output] = browser
        self.page_size = page_size

    def open(self, output: str) -> tuple:
        """Open (or reuse) an output folder: the config, sort and filter choices it offers, the segment-count
        range it spans, a summary and the new state."""
        output = (output or "").strip()
        if not output:
            return (*[gr.update()] * 6, "give an output folder", None)
        try:
            browser = self.browsers.pop(output, None) or OutputBrowser(output)
        except (OSError, ValueError) as error:  # OutputError, or an unreadable part file
            return (*[gr.update()] * 6, f"⚠ {error}", None)
        self.browsers[output] = browser  # the most recent last; a few open outputs bound the memory
        while len(self.browsers) > OPEN_OUTPUTS:
            self.browsers.pop(next(iter(self.browsers)))
        titles = [config_choice(c) for c in browser.configs]
        if not titles:
            return (*[gr.update()] * 6, f"⚠ {output!r} holds no rows", None)
        sorts = sort_choices(browser.score_columns)
        filters = [ALL_ROWS, "ok", "error", *(f"error: {r}" for r in browser.reasons)]
        rows = browser.index.num_rows
        message = f"{rows} rows, {len(browser.configs)} configs" + (
            f", scores from {browser.scores_path}" if browser.scores_path else ", no per-image scores"
        )
        return (
            gr.update(choices=titles, value=titles[0]),
            gr.update(choices=[NO_CONFIG, *titles], value=NO_CONFIG),
            gr.update(choices=sorts, value=sorts[3] if browser.score_columns else sorts[0]),
            gr.update(choices=filters, value=ALL_ROWS),
            0,
            int(pc.max(browser.index.column("segments")).as_py() or 0),
            message,
            {"output": output},
        )

    def browser(self, state: dict | None) -> OutputBrowser | None:
        return None if not state else self.browsers.get(state.get("output"))

    def query(self, state, config_a, config_b, sort, status, min_segments, max_segments) -> tuple:
        """New query: the first page."""
        browser = self.browser(state)
        if browser is None or not config_a:
            return None, REOPEN, state
        key, descending = sort_of(sort)
        filters = {"status": None, "reason": None}
        if status in ("ok", "error"):
            filters["status"] = status
        elif status and status.startswith("error: "):
            filters.update(status="error", reason=status.removeprefix("error: "))
        entries = browser.query(
            config_id(config_a),
            key,
            descending,
            min_segments=None if min_segments in (None, "") else int(min_segments),
            max_segments=None if max_segments in (None, "") else int(max_segments),
            **filters,
        )
        state = {**state, "entries": entries, "page": 0, "a": config_id(config_a), "b": config_id(config_b)}
        return self.page(state)

    def turn(self, state, step: int) -> tuple:
        if not state or "entries" not in state or self.browser(state) is None:
            return None, REOPEN, state
        pages = max(1, -(-state["entries"].num_rows // self.page_size))
        return self.page({**state, "page": min(max(state["page"] + step, 0), pages - 1)})

    def page(self, state: dict) -> tuple:
        """The gallery of the state's page: one tile per image (A and B side by side when B is chosen)."""
        browser = self.browser(state)
        entries = state["entries"]
        start = state["page"] * self.page_size
        chosen = entries.slice(start, self.page_size)
        rows = browser.rows(chosen)
        others = browser.rows_for(state["b"], [r["image_id"] for r in rows]) if state.get("b") else {}
        tiles = []
        for row, entry in zip(rows, chosen.to_pylist()):
            tile = self.tile(browser, row)
            other = others.get(row["image_id"]) if state.get("b") else None
            if state.get("b"):
                tile = side_by_side(tile, self.tile(browser, other) if other else thumbnail(None, None))
            scores = {column: entry[column] for column in browser.score_columns}
            tiles.append((tile, tile_caption(row, scores, other)))
        pages = max(1, -(-entries.num_rows // self.page_size))
        summary = f"page {state['page'] + 1} of {pages} · {entries.num_rows} rows match"
        return tiles, summary, {**state, "rows": rows, "others": others}

    def tile(self, browser: OutputBrowser, row: dict) -> np.ndarray:
        try:
            rgb = browser.image(row)
        except Exception:  # an unreadable image (the reason it is an error row): a grey tile
            return thumbnail(None, None)
        return thumbnail(rgb, decode_segments(row["segments"]) if row["status"] == "ok" else None)

    def select(self, state: dict | None, event: gr.SelectData) -> tuple:
        """A gallery tile chosen: its overlays (A, and B when chosen) and segment tables."""
        browser = self.browser(state)
        if browser is None or "rows" not in state:
            return None, None, REOPEN, state
        row = state["rows"][event.index]
        other = state.get("others", {}).get(row["image_id"])
        pictures, texts = [], []
        for one in (row, other):
            if one is None or one["status"] != "ok":
                pictures.append(None)
                texts.append("" if one is None else f"{one['config_id']}: error: {one['error']}")
                continue
            labels = decode_segments(one["segments"])
            try:
                pictures.append(overlay(browser.image(one), labels))
            except (OSError, ValueError) as error:  # the image moved or broke since the job read it
                pictures.append(None)
                texts.append(f"⚠ {one['image_id']}: cannot read its image: {error}")
            texts.append(segments_table(one))
        detail = {"rows": [row, other]}
        return pictures[0], pictures[1], "\n\n".join(t for t in texts if t), {**state, "detail": detail}

    def click_a(self, state: dict | None, event: gr.SelectData) -> tuple:
        return self.click(state, 0, event)

    def click_b(self, state: dict | None, event: gr.SelectData) -> tuple:
        return self.click(state, 1, event)

    def click(self, state: dict | None, which: int, event: gr.SelectData) -> tuple:
        """A click on a detail overlay: that segment highlighted and described."""
        row = (state or {}).get("detail", {}).get("rows", [None, None])[which]
        browser = self.browser(state)
        if row is None or row["status"] != "ok" or browser is None:
            return gr.update(), ""
        labels = decode_segments(row["segments"])
        segment = segment_at(labels, row["segments"], event.index)
        if segment is None:
            return gr.update(), ""
        described = f"{row['image_id']} · " + segment_text(segment, labels.size)
        try:
            return highlight(browser.image(row), labels, segment["segment_id"]), described
        except (OSError, ValueError):  # the image cannot be read now: the description alone
            return gr.update(), described


def config_choice(config) -> str:
    return f"{config.title} [{config.config_id}]"


def config_id(choice: str | None) -> str | None:
    """The id inside a config choice ``title [id]`` (None for no config)."""
    if not choice or choice == NO_CONFIG:
        return None
    return choice.rsplit("[", 1)[-1].rstrip("]")


def sort_choices(score_columns) -> list[str]:
    """Sort choices: image id, segment count both ways, each score worst first and best first."""
    scores = [f"{column}, {order} first" for column in score_columns for order in ("worst", "best")]
    return ["image id", "segments, fewest first", "segments, most first", *scores]


def sort_of(choice: str | None) -> tuple[str, bool]:
    """A sort choice as (index column, descending). Scores are higher-is-better except ``voi``
    (variation of information), so "worst first" is ascending for them and descending for it."""
    if not choice or choice == "image id":
        return "image_id", False
    column, _, order = choice.partition(", ")
    if column == "segments":
        return column, order == "most first"
    return column, (order == "worst first") == (column == "voi")


def tile_caption(row: dict, scores: dict[str, float | None], other: dict | None) -> str:
    """``image_id · 12 segments · miou 41.2`` (the config's per-image scores), ``| 8 segments`` for the
    config beside it; an error row says its reason."""

    def said(one: dict) -> str:
        if one["status"] != "ok":
            return f"error: {(one['error'] or '').split(':', 1)[0]}"
        return f"{len(one['segments'])} segments"

    scored = "".join(f" · {name} {value:.1f}" for name, value in scores.items() if value is not None)
    return f"{row['image_id']} · {said(row)}{scored}" + (f" | {said(other)}" if other else "")


def segments_table(row: dict) -> str:
    """A row's segments as a Markdown table (id, name, area, bbox, score)."""
    lines = [
        f"**{row['image_id']}** · config {row['config_id']}",
        "",
        "| id | name | area | bbox | score |",
        "|---|---|---|---|---|",
    ]
    for s in row["segments"]:
        score = "" if s["score"] is None else f"{s['score']:.3f}"
        box = ", ".join(f"{v:.0f}" for v in s["bbox"])
        lines.append(f"| {s['segment_id']} | {s['label'] or ''} | {s['area']} | [{box}] | {score} |")
    return "\n".join(lines)
