"""The studio's page (Gradio Blocks): Generate, Compare and, for a run folder, Run. Every request goes
through one queue with one worker, so concurrent requests wait instead of sharing the memory; a failing
request shows its message and the server keeps serving."""

from __future__ import annotations

import functools
import logging
import math
import traceback
from pathlib import Path

import gradio as gr

from ..core.errors import UserError
from .edits import Editor
from .runs import is_run_folder, loss_curve, loss_figure, nearest_preview, preview_grids
from .session import Settings, Studio

log = logging.getLogger(__name__)
MAX_GUIDANCE = 10.0
IMAGE_BUTTONS = ["download", "fullscreen"]  # no share button: nothing is uploaded anywhere


def shown(fn):
    """Run a request; any failure becomes a ``gr.Error`` with a one-line message (the page shows it and
    the server goes on serving)."""

    @functools.wraps(fn)
    def wrapper(*args):
        try:
            return fn(*args)
        except gr.Error:
            raise
        except (UserError, ValueError, FileNotFoundError) as err:
            raise gr.Error(" ".join(str(err).split())) from err
        except Exception as err:
            log.error("request failed:\n%s", traceback.format_exc())
            raise gr.Error(f"{type(err).__name__}: {' '.join(str(err).split())}") from err

    return wrapper


def _describe(studio: Studio) -> str:
    info = studio.info
    kind = f"{info.num_classes} classes" if info.num_classes else "unconditional"
    return (f"### jit studio: `{studio.path}`\n{studio.source.describe()}, {info.image_size} px, {kind}, "
            f"weights {', '.join(studio.weight_names)}; on {studio.device}. Caps: {studio.limits.max_images} "
            f"images and {studio.limits.max_steps} steps per request.")  # fmt: skip


def _class_picker(studio: Studio, elem_id: str, label: str = "class", value: int = 0):
    """A searchable class dropdown whose value is the class index (hidden for unconditional models)."""
    names = studio.class_names
    value = min(value, len(names) - 1) if names else None
    return gr.Dropdown(choices=[(name, k) for k, name in enumerate(names)], value=value, label=label,
                       filterable=True, visible=bool(names), elem_id=elem_id)  # fmt: skip


def _guidance(studio: Studio, value: float, label: str = "guidance weight", elem_id: str | None = None):
    top = max(MAX_GUIDANCE, math.ceil(value))
    return gr.Slider(1.0, top, value=value, step=0.05, label=label, visible=studio.info.num_classes > 0,
                     elem_id=elem_id)  # fmt: skip


def _interval(studio: Studio, prefix: str):
    lo, hi = studio.info.cfg_interval
    visible = studio.info.num_classes > 0
    return (gr.Slider(0.0, 1.0, value=lo, step=0.05, label="guidance from t", visible=visible,
                      elem_id=f"{prefix}-lo"),
            gr.Slider(0.0, 1.0, value=hi, step=0.05, label="guidance to t", visible=visible,
                      elem_id=f"{prefix}-hi"))  # fmt: skip


def _weights(studio: Studio, elem_id: str, value: str | None = None):
    names = studio.weight_names
    return gr.Dropdown(choices=names, value=value or studio.source.default_weights, label="weights",
                       visible=len(names) > 1, elem_id=elem_id)  # fmt: skip


def _nfe_text(studio: Studio, method, steps, cfg, lo, hi) -> str:
    """The NFE line under the solver; a cap or a bad value is shown in place of the number."""
    try:
        return f"**NFE {studio.nfe(method, steps, cfg, (lo, hi))}** network evaluations per image"
    except (UserError, ValueError) as err:
        return f"NFE: {err}"


def _generate_tab(studio: Studio) -> None:
    d = studio.defaults()
    with gr.Row():
        with gr.Column(scale=1):
            label = _class_picker(studio, "class")
            weights = _weights(studio, "weights", d.weights)
            cfg = _guidance(studio, d.cfg, elem_id="cfg")
            lo, hi = _interval(studio, "interval")
            method = gr.Dropdown(choices=list(studio.methods), value=d.method, label="solver", elem_id="solver")
            steps = gr.Number(value=d.steps, precision=0, label="steps", elem_id="steps")
            nfe = gr.Markdown(_nfe_text(studio, d.method, d.steps, d.cfg, *d.interval), elem_id="nfe")
            with gr.Row():
                seed = gr.Number(value=0, precision=0, label="seed", elem_id="seed")
                count = gr.Number(value=8, precision=0, label="images", elem_id="count")
            button = gr.Button("Generate", variant="primary", elem_id="generate")
        with gr.Column(scale=2):
            grid = gr.Image(type="filepath", format="png", label="grid", interactive=False, height=420,
                            buttons=IMAGE_BUTTONS, elem_id="grid")  # fmt: skip
            timing = gr.Markdown(elem_id="timing")
            download = gr.DownloadButton("Download PNG", value=None, interactive=False, elem_id="download")
    nfe_inputs = [method, steps, cfg, lo, hi]
    for field in nfe_inputs:
        field.change(functools.partial(_nfe_text, studio), nfe_inputs, nfe, queue=False)

    @shown
    def run(label_, weights_, cfg_, lo_, hi_, method_, steps_, seed_, count_):
        result = studio.run(Settings(label=label_, cfg=cfg_, interval=(lo_, hi_), method=method_, steps=steps_,
                                     seed=seed_, count=count_, weights=weights_))  # fmt: skip
        return str(result.grid), result.summary(), gr.DownloadButton(value=str(result.grid), interactive=True)

    button.click(run, [label, weights, cfg, lo, hi, method, steps, seed, count], [grid, timing, download],
                 api_name="generate")  # fmt: skip


def _side(studio: Studio, name: str, method: str, steps: int):
    """One side of the comparison: solver, steps, guidance and weights."""
    with gr.Column():
        gr.Markdown(f"#### {name}")
        method_ = gr.Dropdown(choices=list(studio.methods), value=method, label="solver", elem_id=f"solver-{name}")
        steps_ = gr.Number(value=steps, precision=0, label="steps", elem_id=f"steps-{name}")
        cfg = _guidance(studio, studio.info.cfg, elem_id=f"cfg-{name}")
        weights = _weights(studio, f"weights-{name}")
        grid = gr.Image(type="filepath", format="png", label=name, interactive=False, height=300,
                        buttons=IMAGE_BUTTONS, elem_id=f"grid-{name}")  # fmt: skip
        timing = gr.Markdown(elem_id=f"timing-{name}")
    return [method_, steps_, cfg, weights], [grid, timing]


def _compare_tab(studio: Studio) -> None:
    gr.Markdown("Two settings on the same noise: the same class, seed and count, each image from the same draw.")
    with gr.Row():
        label = _class_picker(studio, "compare-class")
        seed = gr.Number(value=0, precision=0, label="seed", elem_id="compare-seed")
        count = gr.Number(value=4, precision=0, label="images", elem_id="compare-count")
        lo, hi = _interval(studio, "compare-interval")
    with gr.Row():
        a_in, a_out = _side(studio, "A", studio.info.method, studio.defaults().steps)
        b_method, b_steps = ("dpm++2m", 10) if "dpm++2m" in studio.methods else (studio.info.method, 2)
        b_in, b_out = _side(studio, "B", b_method, b_steps)
    button = gr.Button("Compare", variant="primary", elem_id="compare")

    @shown
    def run(label_, seed_, count_, lo_, hi_, *sides):
        a, b = (Settings(label=label_, seed=seed_, count=count_, interval=(lo_, hi_), method=m, steps=s, cfg=c,
                         weights=w) for m, s, c, w in (sides[:4], sides[4:]))  # fmt: skip
        ra, rb = studio.compare(a, b)
        return str(ra.grid), ra.summary(), str(rb.grid), rb.summary()

    button.click(run, [label, seed, count, lo, hi, *a_in, *b_in], [*a_out, *b_out], api_name="compare")


def _edit_tab(studio: Studio) -> None:
    editor, d = Editor(studio), studio.defaults()
    with gr.Row():
        with gr.Column(scale=1):
            image = gr.Image(type="filepath", label="image", sources=["upload"], elem_id="edit-image")
            paint = gr.ImageMask(type="filepath", format="png", label="paint the part to regenerate (inpainting)",
                                 sources=[], transforms=(), layers=False, elem_id="edit-paint",
                                 brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"))  # fmt: skip
            mask = gr.Image(type="filepath", label="or upload a mask (white = regenerate)", sources=["upload"],
                            elem_id="edit-mask")  # fmt: skip
            label = _class_picker(studio, "edit-class")
            strength = gr.Slider(0.0, 1.0, value=0.6, step=0.05, label="strength (image to image)",
                                 elem_id="edit-strength")  # fmt: skip
            method = gr.Dropdown(choices=list(studio.methods), value=d.method, label="solver", elem_id="edit-solver")
            steps = gr.Number(value=d.steps, precision=0, label="steps", elem_id="edit-steps")
            cfg = _guidance(studio, d.cfg, elem_id="edit-cfg")
            seed = gr.Number(value=0, precision=0, label="seed", elem_id="edit-seed")
            with gr.Row():
                to_image = gr.Button("Image to image", variant="primary", elem_id="img2img")
                fill = gr.Button("Inpaint", variant="primary", elem_id="inpaint")
            to_label = _class_picker(studio, "edit-to-class", "interpolate to class", value=1)
            frames = gr.Number(value=8, precision=0, label="frames", elem_id="edit-frames")
            strip = gr.Button("Interpolate", elem_id="interpolate")
        with gr.Column(scale=2):
            grid = gr.Image(type="filepath", format="png", label="result", interactive=False, height=420,
                            buttons=IMAGE_BUTTONS, elem_id="edit-grid")  # fmt: skip
            timing = gr.Markdown(elem_id="edit-timing")

    def settings(label_, method_, steps_, cfg_, seed_) -> Settings:
        return Settings(label=label_, method=method_, steps=steps_, cfg=cfg_, seed=seed_, interval=d.interval,
                        weights=d.weights)  # fmt: skip

    common = [label, method, steps, cfg, seed]
    shown_result = lambda r: (str(r.grid), r.summary())  # noqa: E731
    to_image.click(shown(lambda img, st, *c: shown_result(editor.img2img(img, settings(*c), st))),
                   [image, strength, *common], [grid, timing], api_name="img2img")  # fmt: skip
    image.change(lambda img: img, image, paint, queue=False)  # the canvas paints over the uploaded image
    strokes = lambda drawn: (drawn or {}).get("layers") or []  # noqa: E731
    fill.click(shown(lambda img, p, m, *c: shown_result(editor.inpaint(img, m, settings(*c), strokes(p)))),
               [image, paint, mask, *common], [grid, timing], api_name="inpaint")  # fmt: skip
    strip.click(shown(lambda to, n, *c: shown_result(editor.interpolate(settings(*c), to, n))),
                [to_label, frames, *common], [grid, timing], api_name="interpolate")  # fmt: skip


def _run_tab(run_dir: Path) -> None:
    grids = preview_grids(run_dir)
    steps = [s for s, _ in grids]
    gr.Markdown(f"Run folder `{run_dir}`: {len(grids)} preview grids in `samples/`, the loss from `tb/`.")
    if grids:
        gap = functools.reduce(math.gcd, [b - a for a, b in zip(steps, steps[1:])], 0) or 1
        slider = gr.Slider(steps[0], steps[-1], value=steps[-1], step=gap, label="training step",
                           interactive=len(grids) > 1, elem_id="run-step")  # fmt: skip
        preview = gr.Image(value=str(grids[-1][1]), type="filepath", label=f"step {steps[-1]}", height=360,
                           interactive=False, buttons=IMAGE_BUTTONS, elem_id="run-preview")  # fmt: skip

        @shown
        def pick(step):
            found = nearest_preview(grids, step)
            return gr.Image(value=str(found[1]), label=f"step {found[0]}")

        slider.change(pick, slider, preview)
    plot = gr.Plot(value=loss_figure(loss_curve(run_dir)), label="loss", elem_id="run-loss")
    reload = gr.Button("Reload the loss curve", elem_id="run-reload")
    reload.click(shown(lambda: loss_figure(loss_curve(run_dir))), None, plot)


def build_app(studio: Studio) -> gr.Blocks:
    """The page for ``studio``, its queue set to one request at a time."""
    # analytics off: nothing leaves the machine unless --share
    # delete_cache: the page's copies of grids older than an hour go, checked every 10 minutes
    with gr.Blocks(title=f"jit studio: {studio.path.name}", analytics_enabled=False, delete_cache=(600, 3600)) as app:
        gr.Markdown(_describe(studio))
        with gr.Tab("Generate"):
            _generate_tab(studio)
        with gr.Tab("Compare"):
            _compare_tab(studio)
        with gr.Tab("Edit"):
            _edit_tab(studio)
        if is_run_folder(studio.path):
            with gr.Tab("Run"):
                _run_tab(studio.path)
    app.queue(default_concurrency_limit=1)
    return app


def serve(studio: Studio, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
          block: bool = True) -> gr.Blocks:  # fmt: skip
    """Start the page on ``host:port`` (a public link only with ``share``); blocks unless ``block=False``."""
    app = build_app(studio)
    allowed = [studio.out_dir, *([studio.path / "samples"] if is_run_folder(studio.path) else [])]
    app.launch(server_name=host, server_port=port, share=share, inbrowser=False, show_error=True,
               max_file_size=studio.limits.max_upload_bytes, allowed_paths=[str(p) for p in allowed],
               prevent_thread_lock=not block, quiet=True)  # fmt: skip
    return app
