"""The explorer's Gradio app: the Image tab (one image re-segmented from cached attention,
``dsseg.explore.session``) and the Job output tab (``dsseg.explore.output_tab``). Imports Gradio (the ``explore`` extra); ``dsseg.commands.explore`` is the CLI.
"""

import os
import shutil
import tempfile
import time
from collections import deque
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from dsseg.errors import ConfigError
from dsseg.explore.output_tab import OutputTab
from dsseg.explore.outputs import OutputBrowser
from dsseg.explore.render import highlight, legend_html, segment_at, segment_text
from dsseg.explore.session import ExploredImage, ImageExplorer, View, spec_from_controls
from dsseg.io.images import decode_image
from dsseg.methods.configs import STOPPINGS

EXPLORED_METHODS = ("diffseg", "ncut", "openvocab")
# Larger images are explored at this longer side: overlays, clicks and downloads stay interactive.
MAX_IMAGE_SIDE = 2048
KEPT_ANSWERS = 64  # answers (an overlay, or a pair of downloads) whose files the Image tab keeps
NAMINGS = ("none", "classes", "caption")
CSS = ".legend td, .legend th {padding: 2px 8px} #status p {margin: 0}"


def launch(app, host: str, port: int, block: bool = False):
    """Serve ``app`` on ``host:port``; ``block=False`` returns at once (tests), the server in a thread."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    return app.launch(
        server_name=host, server_port=port, prevent_thread_lock=not block, quiet=True, css=CSS, footer_links=[]
    )


class ImageTab:
    """The Image tab's handlers: load an image, re-segment on every control, click a segment."""

    def __init__(self, explorer: ImageExplorer) -> None:
        self.explorer = explorer
        self.downloads = Path(tempfile.mkdtemp(prefix="dsseg-explore-"))
        self.written: deque[Path] = deque()  # our files; Gradio serves copies of them from its own cache

    def load(self, path: str | None, *controls) -> tuple:
        """A new image (upload or pick) segmented with the current controls."""
        if not path:
            return self.empty("upload or pick an image")
        try:
            rgb = decode_image(Path(path).read_bytes(), max_pixels=None, max_side=MAX_IMAGE_SIDE)[0]
            image = ExploredImage.of(rgb, Path(path).stem)
        except (OSError, ValueError) as error:
            return self.empty(f"cannot read this image: {error}")
        return self.show({"image": image}, *controls, depth=None)

    def control(self, state: dict | None, *controls) -> tuple:
        """Any control but the tree depth changed: re-segment, the whole NCut tree shown."""
        return self.show(state, *controls, depth=None)

    def cut(self, state: dict | None, *controls) -> tuple:
        """The tree-depth slider moved: cut the cached NCut tree at its value."""
        *rest, depth = controls
        return self.show(state, *rest, depth=int(depth))

    def show(self, state: dict | None, backbone: str, method: str, *controls, depth: int | None) -> tuple:
        if not state or "image" not in state:
            return self.empty("upload or pick an image")
        start = time.perf_counter()
        try:
            spec = spec_from_controls(method, *controls[:9], extra=self.explorer.params)
            view = self.explorer.view(state["image"], spec, backbone or None, depth if method == "ncut" else None)
        except (ConfigError, ValueError, RuntimeError) as error:
            return self.empty(f"⚠ {error}", state)
        segments = view.segments()
        picture = self.write_picture(view.overlay())
        elapsed = 1000 * (time.perf_counter() - start)
        depth_update = (
            gr.update(maximum=max(view.max_depth, 1), value=view.depth, interactive=True)
            if view.max_depth is not None
            else gr.update()
        )
        new_state = {"image": state["image"], "view": view, "segments": segments}
        return (
            picture,
            status_line(view, elapsed),
            legend_html(view.legend(segments), view.caption),
            None,  # downloads are written on request (save): not on every slider move
            depth_update,
            new_state,
            "",
        )

    def empty(self, message: str, state: dict | None = None) -> tuple:
        return None, message, "", None, gr.update(), state, ""

    def write_picture(self, rgb: np.ndarray) -> str:
        """The overlay as a PNG file to show: fast compression (a third of the default's time at 512²)."""
        path = self.new_folder() / "overlay.png"
        Image.fromarray(rgb).save(path, compress_level=1)
        return str(path)

    def new_folder(self) -> Path:
        """A folder of its own for one answer's files (sessions and overlapping events never share a
        name); the oldest are removed past ``KEPT_ANSWERS``, long after Gradio copied them."""
        folder = Path(tempfile.mkdtemp(dir=self.downloads))
        self.written.append(folder)
        while len(self.written) > KEPT_ANSWERS:
            shutil.rmtree(self.written.popleft(), ignore_errors=True)
        return folder

    def save(self, state: dict | None) -> list[str] | None:
        """The shown segmentation as files to download: the label PNG and the COCO RLE JSON."""
        if not state or "view" not in state:
            return None
        view: View = state["view"]
        segments = state["segments"]
        stem, folder = f"{view.image.name}_{view.spec.method}", self.new_folder()
        labels, rles = folder / f"{stem}_labels.png", folder / f"{stem}_segments.json"
        labels.write_bytes(view.label_png())
        rles.write_text(view.rle_json(segments))
        return [str(labels), str(rles)]

    def click(self, state: dict | None, event: gr.SelectData) -> tuple:
        """A click on the overlay: that segment highlighted and described."""
        if not state or "view" not in state:
            return gr.update(), ""
        view: View = state["view"]
        labels = view.segmentation.labels
        segment = segment_at(labels, state["segments"], event.index)
        if segment is None:
            return gr.update(), ""
        picture = highlight(view.image.rgb, labels, segment["segment_id"])
        return self.write_picture(picture), segment_text(segment, labels.size)


def status_line(view: View, elapsed_ms: float) -> str:
    """What the last change cost: the forward (or that it was cached) and the re-segmentation."""
    forward = "forward cached" if view.forward_cached else f"forward {view.timings_ms['forward']:.0f} ms"
    depth = "" if view.max_depth is None else f" · tree depth {view.depth} of {view.max_depth}"
    return (
        f"{view.segmentation.num_segments} segments · {forward} · re-segmented in {view.timings_ms['segment']:.0f} ms "
        f"· {elapsed_ms:.0f} ms with drawing{depth}"
    )


def build_app(explorer: ImageExplorer, browser: OutputBrowser | None = None, images: list[str] | None = None):
    """The Gradio Blocks app: an Image tab and a Job output tab (opened on ``browser`` when given)."""
    image_tab, output_tab = ImageTab(explorer), OutputTab(browser)
    with gr.Blocks(title="dsseg explore", delete_cache=(600, 600)) as app:
        with gr.Tabs(selected="outputs" if browser else "image"):
            with gr.Tab("Image", id="image"):
                with gr.Row():
                    with gr.Column(scale=1):
                        picked = gr.Image(type="filepath", sources=["upload"], label="Image", elem_id="image-input")
                        if images:
                            gr.Examples(
                                [[path] for path in images], inputs=[picked], label="Pick an image", elem_id="examples"
                            )
                        backbone = gr.Textbox(
                            explorer.backbone_name, label="Backbone (tiny, sd-v1-random, hub id or folder)"
                        )
                        method = gr.Radio(list(EXPLORED_METHODS), value="diffseg", label="Method", elem_id="method")
                        with gr.Group(visible=True) as diffseg_box:
                            kl = gr.Slider(
                                0.1, 3.0, value=1.1, step=0.05, label="DiffSeg τ (KL threshold)", elem_id="kl"
                            )
                            iterations = gr.Slider(
                                1, 6, value=3, step=1, label="merge iterations", elem_id="iterations"
                            )
                            refine = gr.Checkbox(False, label="k-means refinement")
                        with gr.Group(visible=False) as ncut_box:
                            power = gr.Slider(
                                1, 16, value=1, step=1, label="NCut power k (walk length)", elem_id="power"
                            )
                            stopping = gr.Dropdown(list(STOPPINGS), value="manc_ncut", label="stopping rule")
                            ncut_threshold = gr.Slider(
                                0.05, 1.0, value=0.5, step=0.05, label="NCut threshold (stopping = threshold)"
                            )
                            depth = gr.Slider(0, 12, value=12, step=1, label="tree depth", elem_id="depth")
                        with gr.Group(visible=False) as openvocab_box:
                            background = gr.Slider(
                                0.0, 1.0, value=0.5, step=0.05, label="background threshold", elem_id="background"
                            )
                        classes = gr.Textbox(
                            "", label="Classes, comma-separated (openvocab: the labels; others: names)"
                        )
                        naming = gr.Radio(list(NAMINGS), value="none", label="Name segments by", elem_id="naming")
                    with gr.Column(scale=2):
                        shown = gr.Image(
                            label="Segments (click one)", type="filepath", interactive=False, elem_id="overlay"
                        )
                        status = gr.Markdown("upload or pick an image", elem_id="status")
                        clicked = gr.Markdown("", elem_id="segment-info")
                        legend = gr.HTML("", elem_id="legend")
                        save = gr.Button("Save the label PNG and the COCO RLE JSON", elem_id="save")
                        downloads = gr.File(label="Downloads", file_count="multiple", elem_id="downloads")
                state = gr.State(None)
                controls = [
                    backbone,
                    method,
                    kl,
                    iterations,
                    refine,
                    power,
                    stopping,
                    ncut_threshold,
                    background,
                    classes,
                    naming,
                ]
                outputs = [shown, status, legend, downloads, depth, state, clicked]
                # Re-segmentations show no progress animation: it would take CPU from the work it waits on.
                quick = {"trigger_mode": "always_last", "show_progress": "hidden"}
                picked.change(image_tab.load, [picked, *controls], outputs, trigger_mode="always_last")
                for control in (kl, iterations, power, ncut_threshold, background, refine, stopping, naming, method):
                    control.input(image_tab.control, [state, *controls], outputs, **quick)
                for control in (classes, backbone):
                    control.submit(image_tab.control, [state, *controls], outputs, trigger_mode="always_last")
                depth.input(image_tab.cut, [state, *controls, depth], outputs, **quick)
                method.change(
                    lambda m: tuple(gr.update(visible=m == name) for name in EXPLORED_METHODS),
                    [method],
                    [diffseg_box, ncut_box, openvocab_box],
                )
                shown.select(image_tab.click, [state], [shown, clicked])
                save.click(image_tab.save, [state], [downloads])

            with gr.Tab("Job output", id="outputs"):
                with gr.Row():
                    output_path = gr.Textbox(
                        browser.output if browser else "", label="Output folder", scale=4, elem_id="output-path"
                    )
                    open_button = gr.Button("Open", scale=1, elem_id="open-output")
                opened = gr.Markdown("", elem_id="output-summary")
                with gr.Row():
                    config_a = gr.Dropdown([], label="Config", elem_id="config-a", scale=2)
                    config_b = gr.Dropdown([], label="Beside it", elem_id="config-b", scale=2)
                    sort = gr.Dropdown([], label="Sort", elem_id="sort")
                    status_filter = gr.Dropdown([], label="Rows", elem_id="row-filter")
                    min_segments = gr.Number(0, label="segments ≥", precision=0, elem_id="min-segments")
                    max_segments = gr.Number(0, label="segments ≤", precision=0, elem_id="max-segments")
                with gr.Row():
                    previous = gr.Button("◀ previous", elem_id="previous-page")
                    page_text = gr.Markdown("", elem_id="page")
                    following = gr.Button("next ▶", elem_id="next-page")
                gallery = gr.Gallery(
                    object_fit="contain",
                    label="Images (choose one)",
                    columns=4,
                    allow_preview=False,
                    elem_id="gallery",
                    format="jpeg",
                )
                with gr.Row():
                    detail_a = gr.Image(label="Config (click a segment)", interactive=False, elem_id="detail-a")
                    detail_b = gr.Image(label="Beside it", interactive=False, elem_id="detail-b")
                segment_info = gr.Markdown("", elem_id="output-segment")
                tables = gr.Markdown("", elem_id="segment-tables")
                browse = gr.State({"output": browser.output} if browser else None)
                query_inputs = [browse, config_a, config_b, sort, status_filter, min_segments, max_segments]
                page_outputs = [gallery, page_text, browse]
                opened_outputs = [config_a, config_b, sort, status_filter, min_segments, max_segments, opened, browse]
                opening = open_button.click(output_tab.open, [output_path], opened_outputs)
                opening.then(output_tab.query, query_inputs, page_outputs)
                for control in (config_a, config_b, sort, status_filter):
                    control.input(output_tab.query, query_inputs, page_outputs)
                for control in (min_segments, max_segments):
                    control.submit(output_tab.query, query_inputs, page_outputs)
                previous.click(lambda s: output_tab.turn(s, -1), [browse], page_outputs)
                following.click(lambda s: output_tab.turn(s, 1), [browse], page_outputs)
                gallery.select(output_tab.select, [browse], [detail_a, detail_b, tables, browse])
                detail_a.select(output_tab.click_a, [browse], [detail_a, segment_info])
                detail_b.select(output_tab.click_b, [browse], [detail_b, segment_info])
        if browser is not None:
            app.load(output_tab.open, [output_path], opened_outputs).then(output_tab.query, query_inputs, page_outputs)
    return app
