"""Evaluation reports: ``report.md`` (tables laid out like the papers', our number beside the
published one) and ``report.html`` (the same tables, then overlays of sample images; readable
offline: PNGs beside it)."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dsseg.io.overlay import overlay, palette

PROTOCOL_TITLES = {
    "per_image": 'Per-image Hungarian, accumulated over the dataset (DiffSeg protocol; DWC\'s "globally averaged")',
    "per_image_avg": "Per-image Hungarian, averaged over images (DWC Table 6)",
    "oracle_merged": "Oracle merge (each segment → its majority class), averaged over images (DWC Table 6)",
    "global": "Global Hungarian (STEGO protocol; meaningful only for dataset-consistent cluster ids)",
    "semantic": "Open vocabulary (class confusion summed over the dataset)",
}
UNITS = (
    "Acc, F1 and mIoU in percent; BSDS500 covering and PRI as fractions in [0, 1], VoI in nats. "
    "(paper) is the published number of the preset whose settings the row has, under the same protocol."
)


@dataclass(frozen=True)
class ConfigReport:
    """One method config's results for a report: ``matches`` are the presets (published rows) whose
    settings it has; ``notes`` say how it was set up (e.g. a tuned parameter)."""

    config_id: str
    name: str
    method: str
    results: dict[str, Any]
    matches: tuple[Any, ...] = ()  # PresetMatch
    notes: tuple[str, ...] = ()


def _cell(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


BACKBONE_MARKS = {"same": "", "unverified": " ‡", "other": " †"}


def _preset_cell(matches: Sequence[Any]) -> str:
    if not matches:
        return "no preset"
    return ", ".join(m.preset.name + BACKBONE_MARKS[m.backbone] for m in matches)


def markdown_report(dataset: str, frame: str, configs: Sequence[ConfigReport], backbone: str = "") -> str:
    """Tables per protocol: rows are configs, columns Acc / F1 / mIoU; beside ours, in brackets, the
    published number of the preset (paper row) the config matches under that protocol."""
    lines = [f"# dsseg evaluation: {dataset}", "", f"Frame: `{frame}`. Backbone: `{backbone}`. {UNITS}", ""]
    for protocol, title in PROTOCOL_TITLES.items():
        rows = [c for c in configs if protocol in c.results]
        if not rows:
            continue
        lines += [f"## {title}", "", "| config | preset | images | Acc | F1 | mIoU |", "|---|---|---|---|---|---|"]
        for config in rows:
            ours = config.results[protocol]
            here = [m for m in config.matches if m.preset.protocol == protocol]
            paper = max((m.preset.published for m in here), key=len, default={})  # the row reporting the most scores
            cells = [
                f"{_cell(ours[k])} ({_cell(paper[k])})" if k in paper else _cell(ours[k]) for k in ("acc", "f1", "miou")
            ]
            lines.append(
                f"| {config.name} | {_preset_cell(here)} | {config.results['images']} | " + " | ".join(cells) + " |"
            )
        lines.append("")
    bsds = [c for c in configs if "bsds" in c.results]
    if bsds:
        lines += [
            "## BSDS500 (against every annotator)",
            "",
            "| config | images | covering ↑ | PRI ↑ | VoI ↓ |",
            "|---|---|---|---|---|",
        ]
        for config in bsds:
            b = config.results["bsds"]
            lines.append(
                f"| {config.name} | {config.results['images']} | {b['covering']:.3f} | {b['pri']:.3f} | {b['voi']:.3f} |"
            )
        lines.append("")
    matched = {m.preset.name: m for c in configs for m in c.matches}
    relations = {m.backbone for m in matched.values()}
    if "other" in relations:
        lines += [
            f"† run on backbone `{backbone}`, not the paper's: the settings match, the numbers are not comparable.",
            "",
        ]
    if "unverified" in relations:
        lines += [f"‡ backbone `{backbone}` is a local folder: comparable only if it holds the preset's weights.", ""]
    if matched:
        lines += ["## Presets matched", ""]
        for match in matched.values():
            lines += ["```", *match.preset.describe(), "```", ""]
    unmatched = [c.name for c in configs if not c.matches]
    if unmatched:
        lines += ["Configs matching no preset (no published number beside them): " + ", ".join(unmatched), ""]
    notes = [f"- {c.name}: {note}" for c in configs for note in c.notes]
    if notes:
        lines += ["## Notes", "", *notes, ""]
    failed = [c for c in configs if c.results.get("failed")]
    if failed:
        lines += [
            "Rows that failed (error rows, not scored): "
            + ", ".join(f"{c.name}: {c.results['failed']}" for c in failed),
            "",
        ]
    return "\n".join(lines)


def colour_classes(labels: np.ndarray, count: int) -> np.ndarray:
    """(H, W) class map (255 = ignore, drawn black) → (H, W, 3) uint8 colours."""
    colours = np.vstack([palette(max(count, 1)), np.zeros((256 - max(count, 1), 3), dtype=np.uint8)])
    return colours[np.clip(labels, 0, 255)]


def _thumbnail(image: np.ndarray, width: int) -> Image.Image:
    picture = Image.fromarray(image)
    if picture.width > width:
        picture = picture.resize((width, round(picture.height * width / picture.width)), Image.NEAREST)
    return picture


@dataclass(frozen=True)
class Panel:
    """One picture of a report row: a title, an (H, W, 3) image and a legend of (colour, name)."""

    title: str
    image: np.ndarray
    legend: tuple[tuple[tuple[int, int, int], str], ...] = ()


def segmentation_panel(title: str, rgb: np.ndarray, labels: np.ndarray, names: Sequence[str | None]) -> Panel:
    """An overlay of ``labels`` on ``rgb`` (boundaries white) with its segment names as legend."""
    if labels.shape != rgb.shape[:2]:
        rgb = np.asarray(Image.fromarray(rgb).resize(labels.shape[::-1], Image.BILINEAR))
    colours = palette(int(labels.max()) + 1)
    legend = tuple((tuple(int(c) for c in colours[i]), name) for i, name in enumerate(names) if name)
    return Panel(title, overlay(rgb, labels), legend)


def ground_truth_panel(labels: np.ndarray, class_names: Sequence[str]) -> Panel:
    colours = palette(max(len(class_names), 1))
    present = [int(v) for v in np.unique(labels) if v != 255 and v < len(class_names)]
    legend = tuple((tuple(int(c) for c in colours[v]), class_names[v]) for v in present)
    return Panel("ground truth", colour_classes(labels, len(class_names)), legend)


def markdown_to_html(text: str) -> str:
    """The Markdown ``markdown_report`` writes (headings, pipe tables, fenced blocks, list items,
    paragraphs) as HTML, escaped; ``**`` and backticks are kept as written."""
    out: list[str] = []
    table: list[list[str]] = []
    fenced: list[str] | None = None

    def end_table() -> None:
        if table:
            head, *body = table
            out.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>")
            out.extend("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
            out.append("</table>")
            table.clear()

    for line in text.splitlines():
        if fenced is not None:
            if line.startswith("```"):
                out.append("<pre>" + html.escape("\n".join(fenced)) + "</pre>")
                fenced = None
            else:
                fenced.append(line)
            continue
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not all(set(cell) <= set("-: ") for cell in cells):  # the |---|---| rule
                table.append(cells)
            continue
        end_table()
        if line.startswith("```"):
            fenced = []
        elif line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + 1, 4)  # the page's own title is the h1
            out.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("- "):
            out.append(f"<li>{html.escape(line[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    end_table()
    return "\n".join(out)


def html_report(
    path: Path, title: str, rows: Sequence[tuple[str, Sequence[Panel]]], width: int = 320, tables: str = ""
) -> Path:
    """Write ``path`` (report.html) and its PNGs into ``<stem>_files/``: ``tables`` (the Markdown
    of ``markdown_report``: metric tables beside the published numbers) first, then one row of
    pictures per image."""
    assets = path.with_name(f"{path.stem}_files")
    assets.mkdir(parents=True, exist_ok=True)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:16px}figure{display:inline-block;vertical-align:top;margin:4px}"
        "figcaption{font-size:12px;max-width:"
        + str(width)
        + "px}.sw{display:inline-block;width:10px;height:10px;margin-right:3px}"
        "h2{font-size:16px;margin:16px 0 4px}table{border-collapse:collapse;margin:4px 0 12px}"
        "td,th{border:1px solid #ccc;padding:2px 8px;font-size:13px;text-align:left}pre{font-size:12px}</style>"
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if tables:
        parts += ["<section id='metrics'>", markdown_to_html(tables), "</section>", "<h2>Sample images</h2>"]
    for index, (heading, panels) in enumerate(rows):
        parts.append(f"<h2>{html.escape(heading)}</h2><div>")
        for k, panel in enumerate(panels):
            name = f"{index:03d}_{k}.png"
            _thumbnail(panel.image, width).save(assets / name)
            legend = " ".join(
                f"<span class='sw' style='background:rgb{colour}'></span>{html.escape(str(label))}"
                for colour, label in panel.legend
            )
            parts.append(
                f"<figure><img src='{assets.name}/{name}' alt='{html.escape(panel.title)}' width='{min(width, panel.image.shape[1])}'>"
                f"<figcaption><b>{html.escape(panel.title)}</b><br>{legend}</figcaption></figure>"
            )
        parts.append("</div>")
    parts.append(f"<script>{IMAGE_CHECK}</script></body></html>")
    path.write_text("\n".join(parts))
    return path


# Logs how many pictures loaded (a headless browser's check) and warns on the page when the
# PNG folder was not kept beside the HTML.
IMAGE_CHECK = """window.addEventListener('load', () => {
  const images = [...document.images];
  const broken = images.filter(image => !(image.complete && image.naturalWidth > 0));
  console.log(`dsseg-report: ${images.length} images, ${broken.length} broken`);
  if (broken.length) document.body.insertAdjacentHTML('afterbegin',
    `<p style="color:#b00">${broken.length} pictures could not be loaded: keep the _files folder beside this page.</p>`);
});"""
