"""Every view `xfer show` has, as HTML: one renderer for the browser (pipeline/ui.py) and
notebooks (xfer.views). Jinja2 with autoescape: whatever comes from data (class names, file
names, paths, error text) reaches the page as text. The numbers come from the same readers
as the text views (pipeline/views.py, pipeline/blessing.py), so the two never disagree.

Images are the PNGs the pipeline drew; `image_src(artifact_id, uri, name)` says how a page
refers to one: the server's file URL, or the bytes inlined (`inline_image`) for a notebook.
"""
from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from typing import Callable, Optional

import jinja2
from markupsafe import Markup

from xfer.pipeline import store as mlmd
from xfer.pipeline import views as text_views

ImageSrc = Callable[[int, str, str], Optional[str]]
ENV = jinja2.Environment(loader=jinja2.PackageLoader("xfer.pipeline", "templates"),
                         autoescape=True, undefined=jinja2.StrictUndefined)
STATE_COLORS = {"executed": "#c8e6c9", "complete": "#c8e6c9", "cached": "#bbdefb", "failed": "#ffcdd2",
                "running": "#fff59d", "interrupted": "#ffe0b2"}


def _when(ms: Optional[int]) -> str:
    from datetime import datetime
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


def _first_line(text: str) -> str:
    """The line of an error that says what happened: its last non-empty line (a traceback's
    exception), or the whole of a one-line message."""
    lines = [line for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else ""


ENV.filters.update(when=_when, first_line=_first_line, state_color=lambda s: STATE_COLORS.get(s, "#eeeeee"))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# The Trainer's plots, in the order a user reads them (components/reports.py's files).
TRAINER_PLOTS = (("curves.png", "Training curves, both phases"), ("confusion_matrix.png", "Confusion matrix (eval split)"),
                 ("gradcam_grid.png", "Grad-CAM: where the evidence is"), ("top_losses.png", "Top losses"),
                 ("eval_grid.png", "Eval images, actual / predicted"))


@dataclass
class View:
    title: str
    body: Markup


def _macros():
    return ENV.get_template("views.html").module


def _read_bytes(path: str) -> Optional[bytes]:
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read()


def inline_image(artifact_id: int, uri: str, name: str) -> Optional[str]:
    """A data: URL of a PNG in an artifact (notebooks: no server to fetch it from)."""
    data = _read_bytes(os.path.join(uri, name))
    if data is None or not data.startswith(PNG_MAGIC):
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def lines_view(title: str, lines: list[str]) -> View:
    return View(title, _macros().lines([line.removeprefix("  ") for line in lines]))


def _guarded(title: str, make: Callable[[], View]) -> View:
    """A view whose artifact cannot be read (a step still writing it, an output from an older
    version) says so, with the reason, instead of breaking the page."""
    try:
        return make()
    except Exception as e:  # noqa: BLE001 - shown to the user, as text
        return View(title, _macros().problem(f"could not read this view: {type(e).__name__}: {e}"))


def _guarded_many(title: str, make: Callable[[], list[View]]) -> list[View]:
    try:
        return make()
    except Exception as e:  # noqa: BLE001 - shown to the user, as text
        return [View(title, _macros().problem(f"could not read this view: {type(e).__name__}: {e}"))]


def examples_view(artifact, label_key: str) -> View:
    spans = mlmd.custom_property(artifact, "spans") or mlmd.custom_property(artifact, "span")
    lines = [f"spans: {str(spans).replace(',', ', ')}"] if spans is not None else []
    return lines_view("Examples: spans and labels", lines + text_views.label_distribution(artifact.uri, label_key))


def checked_view(artifact) -> View:
    """DataCheck's outcome: records kept per split and label, drift between spans, bad records."""
    return lines_view("DataCheck: records kept, drift, bad records",
                      text_views.view_checked(artifact.uri, mlmd.custom_property(artifact, "bad_records")))


def model_run_views(artifact, image_src: ImageSrc) -> list[View]:
    """Training curves of both phases with the recipe, the Trainer's plots, the TensorBoard logs."""
    from xfer.components.model_card import _recipe

    m = _macros()
    history_text = _read_bytes(os.path.join(artifact.uri, "history.json"))
    history = json.loads(history_text) if history_text else {}
    out = []
    for name, title in TRAINER_PLOTS:
        src = image_src(artifact.id, artifact.uri, name)
        if src:
            out.append(View(title, m.image(src, title, name)))
    if history:
        out.insert(1 if out else 0, View("Recipe", m.sections([_recipe(history)])))
        out.append(View("Epochs", m.epochs(history.get("class_names", []), _epoch_rows(history))))
    out.append(View("TensorBoard logs", m.lines([f"tensorboard --logdir {os.path.join(artifact.uri, 'logs')}"])))
    return out


def _epoch_rows(history: dict) -> tuple[list[str], list[list]]:
    keys = sorted({k for h in history.get("history", {}).values() for k in h})
    rows, epoch = [], 0
    for phase, h in history.get("history", {}).items():
        for i in range(len(next(iter(h.values()), []))):
            epoch += 1
            rows.append([epoch, phase] + [f"{h[k][i]:.4f}" if k in h and i < len(h[k]) else "" for k in keys])
    return keys, rows


def blessing_view(evaluation_uri: str, blessed: bool, model_uri: Optional[str], ev) -> View:
    """The blessing report: TFMA's verdict on each threshold, accuracy against the served
    model's, recall per class against the served model's."""
    from xfer.components.model_card import class_names
    from xfer.pipeline.blessing import read_blessing

    names = class_names(os.path.join(model_uri, "Format-Serving")) if model_uri else None
    b = read_blessing(evaluation_uri, blessed, names or None)
    rows = [(b.class_name(c.label), c.examples, c.candidate, c.baseline, c.low(ev)) for c in b.per_class]
    return View("Blessing report", _macros().blessing(
        b, b.headline(ev), b.tta_line(ev), b.report(ev), rows,
        text_views.confusion_lines(evaluation_uri)))


def model_card_view(pushed) -> View:
    """The pushed version's model card, as the Pusher wrote it (plots inlined), in a frame
    that runs no script."""
    card = mlmd.custom_property(pushed, "model_card")
    if not mlmd.custom_property(pushed, "pushed"):
        return lines_view("Model card", ["nothing pushed (model not blessed): no model card"])
    if not card:
        return lines_view("Model card", ["this version has no model card"])
    from xfer.components.model_card import HTML

    html = _read_bytes(os.path.join(os.path.dirname(card), HTML))
    markdown = _read_bytes(card)
    return View("Model card", _macros().model_card(
        card, html.decode("utf-8", "replace") if html else None,
        markdown.decode("utf-8", "replace") if markdown else None))


def result_view(result: Optional[dict]) -> View:
    if result is None:
        return lines_view("result.json", ["no result.json: the run is still going, or its `xfer run` "
                                          "was stopped before writing it"])
    return View("result.json", _macros().json_doc(json.dumps(result, indent=1)))


def lr_find_views(root: str) -> list[View]:
    """lr-find's plots under ROOT/reports/lr_find/, newest first, with the suggested rate."""
    folder = os.path.join(root, "reports", "lr_find")
    out = []
    for name in sorted(os.listdir(folder), reverse=True) if os.path.isdir(folder) else []:
        def make(name=name):
            from xfer.pipeline.lr_find import PLOT, POINTS

            points = json.loads(_read_bytes(os.path.join(folder, name, POINTS)) or b"{}")
            src = inline_image(0, os.path.join(folder, name), PLOT)
            lines = [f"suggested: {points.get('set', '-')} ({(points.get('suggestion') or {}).get('rule', '')}); "
                     f"inputs from run {points.get('run_id', '-')}"]
            return View(f"lr-find {name}", _macros().lr_find(src, lines))
        out.append(_guarded(f"lr-find {name}", make))
    return out


def step_views(run, step, config, image_src: ImageSrc) -> list[View]:
    """The views of one step's outputs (run_records' Run and Step), in the order `xfer show`
    prints them."""
    blessed = next((bool(mlmd.custom_property(a, "blessed")) for t, a in step.artifacts
                    if t == "ModelBlessing" and mlmd.custom_property(a, "blessed") is not None), None)
    out: list[View] = []
    for type_name, a in step.artifacts:
        if type_name == "Examples" and step.name == "ImportExampleGen":
            out.append(_guarded("Examples", lambda a=a: examples_view(a, config.data.label_key)))
        elif type_name == "Examples" and step.name == "DataCheck":
            out.append(_guarded("DataCheck", lambda a=a: checked_view(a)))
        elif type_name == "ExampleStatistics":
            out.append(_guarded("Statistics", lambda a=a: lines_view(
                "Statistics per split (counts, image formats and sizes)", text_views.view_statistics(a.uri))))
        elif type_name == "Schema":
            out.append(_guarded("Schema", lambda a=a: lines_view("Schema", text_views.view_schema(a.uri))))
        elif type_name == "ExampleAnomalies":
            out.append(_guarded("Anomalies", lambda a=a: lines_view("Anomalies", text_views.view_anomalies(a.uri))))
        elif type_name == "TransformGraph":
            out.append(_guarded("Transform", lambda a=a: lines_view(
                "Transform's output schema", text_views.view_transform(a.uri))))
        elif type_name == "ModelRun":
            out += _guarded_many("Training", lambda a=a: model_run_views(a, image_src))
        elif type_name == "ModelEvaluation":
            model = trainer_model_uri(run)
            out.append(_guarded("Blessing report", lambda a=a: blessing_view(a.uri, bool(blessed), model, config.eval)))
        elif type_name == "PushedModel":
            out.append(_guarded("Model card", lambda a=a: model_card_view(a)))
    return out


def trainer_model_uri(run) -> Optional[str]:
    trainer = run.steps.get("Trainer")
    return next((a.uri for t, a in trainer.artifacts if t == "Model"), None) if trainer else None


def render(template: str, **values) -> str:
    return ENV.get_template(template).render(**values)
