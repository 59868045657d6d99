"""The model card of a pushed version: MODEL_CARD.md and model_card.html, written by the
Pusher into the version before it becomes visible (components/pusher.py).

Everything on it is read from the artifacts the Pusher receives, never recomputed:
the classes from the model's assets.extra/labels.txt; the data from DataCheck's checked
examples (spans on the artifact, label_counts.json, span_stats.json); the recipe from the
Trainer's history.json (the settings it trained with, the epochs each phase really ran);
the metrics, thresholds and per-class recall from the Evaluator's TFMA output through
pipeline/blessing.py (the blessing report's own reader); lineage from the run. The card
is one list of sections rendered twice, so the Markdown and the HTML say the same.

Class names, paths and every other value on the card come from the user's data and
config, so both renderings escape them: no value becomes a tag, a link, an image or
emphasis, and characters that are invisible or reorder the text (a bidi override such as
U+202E) are shown as their code point.
"""
from __future__ import annotations

import base64
import html
import json
import os
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Optional

MARKDOWN = "MODEL_CARD.md"
HTML = "model_card.html"
# Known limits: a class whose recall is this far below overall accuracy (or 0, or more
# than the drop thresholds below the served model's, as the blessing report's LOW).
LOW_MARGIN = 0.1
PLOTS = (("curves.png", "Accuracy and loss per epoch (train and validation, both phases)"),
         ("confusion_matrix.png", "Confusion matrix on the eval split"),
         ("eval_grid.png", "Eval images, actual / predicted"))


@dataclass
class Inputs:
    """Where the card's facts are: the artifacts the Pusher received, and the run."""
    model_dir: str                      # the SavedModel pushed (the Trainer's Format-Serving)
    model_uri: str                      # the Trainer's model artifact
    version: int
    destination: str
    eval: object                        # settings.EvalConfig: the thresholds that judged it
    blessed: bool
    code_fingerprint: str
    run_id: Optional[str] = None
    image: Optional[str] = None
    model_run_uri: Optional[str] = None
    examples_uri: Optional[str] = None
    spans: Optional[str] = None         # "2,3" (data.spans.window) or a single span
    bad_records: Optional[int] = None
    evaluation_uri: Optional[str] = None
    baseline: Optional[str] = None      # "version 1 (/path/serving/1)" or None: nothing served
    canary: Optional[object] = None     # its Section (components/canary.py): checks and latency


@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)  # ("p", text) | ("table", header, rows) | ("pre", text) | ("img", caption, png)


def _read(path: str, mode: str = "r"):
    import tensorflow as tf

    if not path or not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path, mode) as f:
        return f.read()


def class_names(model_dir: str) -> list[str]:
    text = _read(os.path.join(model_dir, "assets.extra", "labels.txt")) or ""
    return [line.strip() for line in text.splitlines() if line.strip()]


def _label_name(label: str, names: list[str]) -> str:
    """DataCheck's label text ("3", or a string label) as the class it is."""
    if label.lstrip("-").isdigit() and 0 <= int(label) < len(names):
        return f"{names[int(label)]} ({label})" if names[int(label)] != label else label
    return label


def _fmt(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.4f}"


def build(i: Inputs, folder: Optional[str] = None) -> list[Section]:
    names = class_names(i.model_dir)
    history = json.loads(_read(os.path.join(i.model_run_uri or "", "history.json")) or "{}")
    if not names:
        names = history.get("class_names", [])
    sections = [_classes(names, i), _data(i, names), _recipe(history)]
    evaluation, blessing = _evaluation(i, names)
    from xfer.components import calibration, tflite_export
    sections += [evaluation, _limits(blessing, i, names), calibration.card_section(i.model_run_uri),
                 tflite_export.card_section(folder) if folder else Section("TFLite"), _lineage(i), _plots(i)]
    if i.canary is not None:
        sections.insert(len(sections) - 2, i.canary)  # before Lineage and Plots
    return [s for s in sections if s.blocks]


def _classes(names: list[str], i: Inputs) -> Section:
    s = Section("What it classifies")
    s.blocks.append(("p", f"Images, into one of {len(names)} classes (the model's assets.extra/labels.txt). "
                          f"It takes encoded image bytes (JPEG, PNG, GIF, BMP) and returns the class "
                          f"probabilities, the class id and name (signature serving_default)."))
    s.blocks.append(("table", ("class id", "class"), [(str(k), n) for k, n in enumerate(names)]))
    return s


def _data(i: Inputs, names: list[str]) -> Section:
    from xfer.components.data_check import read_label_counts
    from xfer.components.import_gen import read_span_stats

    s = Section("Data")
    if not i.examples_uri:
        s.blocks.append(("p", "Not recorded (the Pusher received no examples)."))
        return s
    spans = [x for x in (i.spans or "").split(",") if x]
    if len(spans) > 1:
        s.blocks.append(("p", f"Spans: train split from spans {', '.join(spans)}; eval split from span {spans[-1]}."))
    elif spans:
        s.blocks.append(("p", f"Span: {spans[0]}" + (" (one input, no {SPAN} pattern)." if spans[0] == "0" else ".")))
    try:
        counts = read_label_counts(i.examples_uri)
    except Exception:  # noqa: BLE001 - an output from before the counts were kept
        counts = {}
    if counts:
        splits = sorted(counts, key=lambda sp: ({"train": 0, "eval": 1}.get(sp, 2), sp))
        labels = sorted({label for per in counts.values() for label in per},
                        key=lambda v: (not v.lstrip("-").isdigit(), int(v) if v.lstrip("-").isdigit() else 0, v))
        rows = [(_label_name(label, names), *(str(counts[sp].get(label, 0)) for sp in splits)) for label in labels]
        rows.append(("total", *(str(sum(counts[sp].values())) for sp in splits)))
        s.blocks.append(("p", "Examples per class and split, as checked by DataCheck (the records the "
                              "Trainer and the Evaluator read):"))
        s.blocks.append(("table", ("class", *splits), rows))
    if i.bad_records:
        s.blocks.append(("p", f"Bad records skipped (data.on_bad_image: skip): {i.bad_records}, listed in "
                              f"{os.path.join(i.examples_uri, 'bad_records.json')}."))
    stats = read_span_stats(i.examples_uri)
    if stats:
        rows = []
        for span in stats.get("window", []):
            entry = stats["spans"].get(str(span), {})
            rows.append((str(span), str(entry.get("records", 0)),
                         ", ".join(f"{k} {v}" for k, v in entry.get("format", {}).items()),
                         ", ".join(f"{k} px: {v}" for k, v in entry.get("size", {}).items())))
        s.blocks.append(("p", "Image formats and sizes of the train split (read from each image's header; "
                              "size = the longer side):"))
        s.blocks.append(("table", ("span", "records", "formats", "sizes"), rows))
    else:
        s.blocks.append(("p", "Image formats and sizes: not recorded (ImportExampleGen records them per span "
                              "when the train pattern has {SPAN}; xfer show RUN StatisticsGen has the formats)."))
    return s


def _phase_line(name: str, p: dict, epochs_run: Optional[int], extra: str = "") -> tuple:
    schedule = p.get("schedule", "constant")
    if p.get("warmup_epochs"):
        schedule += f", {p['warmup_epochs']:g} warm-up epoch(s)"
    es = p.get("early_stopping")
    stop = f"early stopping on {es['monitor']} (patience {es['patience']})" if es else "no early stopping"
    return (name, f"{epochs_run if epochs_run is not None else '-'} of {p.get('epochs')}",
            f"{p.get('optimizer')} {p.get('learning_rate'):g}", schedule, (extra + "; " if extra else "") + stop)


def _recipe(history: dict) -> Section:
    s = Section("Recipe")
    settings = history.get("settings")
    if not settings:
        s.blocks.append(("p", "Not recorded (a Trainer output from before the settings were kept)."))
        return s
    m, t = settings["model"], settings["train"]
    head = m.get("head", {})
    s.blocks.append(("p", f"Backbone {m['backbone']}" + (f" (alpha {m['alpha']:g})" if m["backbone"] == "mobilenet_v2" else "")
                     + f", weights {m['weights']}, {m['image_size']} px input; head: "
                     + ", ".join(f"{k} {v}" for k, v in head.items()) + "."))
    if history.get("started_from"):
        s.blocks.append(("p", f"Weights at the start: {history['started_from']}."))
    ran = {phase: len(next(iter(h.values()), [])) for phase, h in history.get("history", {}).items()}
    rows = []
    if t["transfer"]["epochs"]:
        rows.append(_phase_line("transfer (base frozen)", t["transfer"], ran.get("transfer"),
                                f"features cached: {t['transfer'].get('cache_features')}"))
    ft = t["fine_tune"]
    if ft.get("enabled") and ft["epochs"]:
        unfrozen = f"from {ft['from_layer']}" if ft.get("from_layer") else f"top {ft['fraction']:g} of the base"
        extra = f"unfrozen {unfrozen}" + (f", base layers x{ft['base_lr_factor']:g}" if ft.get("base_lr_factor", 1) != 1 else "")
        rows.append(_phase_line("fine_tune", ft, ran.get("fine_tune"), extra))
    s.blocks.append(("table", ("phase", "epochs run", "optimizer, rate", "schedule", "notes"), rows))
    augment = ", ".join(f"{k} {v}" for k, v in t.get("augment", {}).items() if v) or "none"
    s.blocks.append(("p", f"Batch size {t['batch_size']}, seed {t['seed']}; augmentation (train split only): "
                          f"{augment}; label smoothing "
                          f"{t.get('label_smoothing', 0):g}; class weights {t.get('class_weight', 'none')}; "
                          f"serving TTA {settings.get('serving', {}).get('tta') or 'off'}."))
    return s


def _evaluation(i: Inputs, names: list[str]):
    from xfer.pipeline.blessing import read_blessing

    s = Section("Evaluation")
    if not i.evaluation_uri:
        s.blocks.append(("p", "Not recorded (the Pusher received no evaluation)."))
        return s, None
    b = read_blessing(i.evaluation_uri, i.blessed, names)
    ev = i.eval
    s.blocks.append(("p", f"On the eval split, by the Evaluator (TFMA). {b.headline(ev)}."))
    cand, base = b.metrics.get("candidate", {}), b.metrics.get("baseline", {})
    wanted = [("accuracy", "sparse_categorical_accuracy"), (f"top-{ev.top_k} accuracy", f"top_{ev.top_k}_accuracy"),
              ("loss (cross-entropy)", "loss"), ("examples", "example_count")]
    rows = [(label, _fmt(cand.get(key)) if key != "example_count" else str(int(cand.get(key, 0))),
             (_fmt(base.get(key)) if key != "example_count" else str(int(base[key]))) if key in base else "-")
            for label, key in wanted if key in cand]
    served = i.baseline or ("its version not recorded" if b.baseline is not None else "none: nothing was served yet")
    s.blocks.append(("p", f"Overall (baseline: the model served when this one was judged, {served}):"))
    s.blocks.append(("table", ("metric", "this model", "baseline"), rows))
    s.blocks.append(("p", "Thresholds (the blessing report):"))
    s.blocks.append(("pre", "\n".join(line[2:] for line in b.threshold_lines(ev))))
    rows = []
    for c in b.per_class:
        rows.append((b.class_name(c.label), "-" if c.examples is None else str(c.examples),
                     _fmt(c.candidate), _fmt(c.baseline), "LOW" if low(c, b, ev) else ""))
    if rows:
        s.blocks.append(("p", "Recall per true class (accuracy within the class's eval examples):"))
        s.blocks.append(("table", ("class", "eval examples", "recall", "baseline recall", "flag"), rows))
    return s, b


def low(c, b, ev) -> bool:
    """LOW on the card: the blessing report's LOW (recall 0, or a drop vs the served model
    beyond a drop threshold), or recall more than LOW_MARGIN below overall accuracy."""
    if c.candidate is None:
        return False
    return c.low(ev) or (b.candidate is not None and c.candidate < b.candidate - LOW_MARGIN)


def _not_evaluated(i: Inputs, names: list[str]) -> list[str]:
    """Classes with no eval example (DataCheck's counts): no recall can be measured."""
    from xfer.components.data_check import read_label_counts

    try:
        evaluated = read_label_counts(i.examples_uri).get("eval", {}) if i.examples_uri else None
    except Exception:  # noqa: BLE001 - an output from before the counts were kept
        evaluated = None
    if evaluated is None:
        return []
    return [n for k, n in enumerate(names) if not evaluated.get(str(k)) and not evaluated.get(n)]


def _limits(b, i: Inputs, names: list[str]) -> Section:
    s = Section("Known limits")
    if b is None:
        return s
    flagged = [c for c in b.per_class if low(c, b, i.eval)]
    rule = (f"recall 0, recall more than {LOW_MARGIN:g} below overall accuracy ({_fmt(b.candidate)}), or a drop "
            f"beyond the drop thresholds against the served model")
    if flagged:
        s.blocks.append(("p", f"Classes flagged LOW ({rule}): "
                              + "; ".join(f"{b.class_name(c.label)} recall {_fmt(c.candidate)} on {c.examples} "
                                          f"eval example(s)" for c in flagged) + "."))
    else:
        s.blocks.append(("p", f"No class flagged LOW ({rule})."))
    missing = _not_evaluated(i, names)
    if missing:
        s.blocks.append(("p", f"Not evaluated (no eval example): {', '.join(missing)}; its recall is unknown."))
    smallest = min((c.examples for c in b.per_class if c.examples is not None), default=None)
    if smallest is not None and smallest < 30:
        s.blocks.append(("p", f"The smallest evaluated class has {smallest} eval example(s): its recall moves by "
                              f"{1 / smallest:.2f} per image, so per-class figures are rough."))
    s.blocks.append(("p", "It knows only the classes above: any other image still gets one of them."))
    return s


def _lineage(i: Inputs) -> Section:
    s = Section("Lineage")
    rows = [("version", f"{i.version} under {i.destination}"), ("run id", i.run_id or "-"),
            ("code fingerprint", i.code_fingerprint), ("container image", i.image or "- (local run)"),
            ("Trainer model", i.model_uri), ("Trainer model run", i.model_run_uri or "-"),
            ("checked examples", i.examples_uri or "-"), ("evaluation", i.evaluation_uri or "-")]
    s.blocks.append(("table", ("what", "value"), rows))
    return s


def _plots(i: Inputs) -> Section:
    s = Section("Plots")
    for name, caption in PLOTS:
        data = _read(os.path.join(i.model_run_uri or "", name), "rb")
        if data:
            s.blocks.append(("img", caption, data, os.path.join(i.model_run_uri, name)))
    return s


# Shown as "(U+202E)": control characters, format characters (bidi overrides and marks,
# zero-width characters), line and paragraph separators, unpaired surrogates.
INVISIBLE = ("Cc", "Cf", "Zl", "Zp", "Cs")
# Always backslash-escaped in Markdown: these start code, emphasis, links and images,
# headings, and escapes. "_" only where it can emphasize (not inside a word: mobilenet_v2).
MD_ALWAYS = re.compile(r"([\\`*\[\]#!])")
MD_UNDERSCORE = re.compile(r"(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")
# At the start of a paragraph: a list item or a numbered one ("- x", "+ x", "3. x", "3) x").
MD_LINE_START = re.compile(r"^(\s*)([-+]|\d+(?=[.)]))")


def visible(text, keep_newlines: bool = False) -> str:
    """`text` with each invisible or reordering character as "(U+XXXX)"; newlines as
    spaces unless kept (a table cell or paragraph is one line)."""
    text = str(text)
    if not keep_newlines:
        text = text.replace("\r\n", " ").replace("\n", " ")
    return "".join(f"(U+{ord(c):04X})" if unicodedata.category(c) in INVISIBLE and not (keep_newlines and c == "\n")
                   else c for c in text)


def md_text(text, starts_line: bool = True) -> str:
    """Plain text for a Markdown paragraph or heading (`starts_line`) or a table cell:
    shown as written, nothing live. <, > and & as entities (no HTML tag or autolink
    survives a Markdown renderer, which passes HTML through), Markdown punctuation
    backslash-escaped."""
    t = visible(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    t = MD_UNDERSCORE.sub(r"\\_", MD_ALWAYS.sub(r"\\\1", t))
    m = MD_LINE_START.match(t) if starts_line else None
    if m:  # "3." -> "3\.", "-" -> "\-"
        at = m.end() if m.group(2).isdigit() else m.start(2)
        t = t[:at] + "\\" + t[at:]
    return t


def _md_cell(v) -> str:
    return md_text(v, starts_line=False).replace("|", "\\|")


def _md_code(text) -> str:
    """`text` as an inline code span: literal whatever it holds (its fence is longer
    than any run of backticks inside)."""
    t = visible(text)
    fence = "`" * (max((len(r) for r in re.findall(r"`+", t)), default=0) + 1)
    pad = " " if t.startswith("`") or t.endswith("`") else ""
    return f"{fence}{pad}{t}{pad}{fence}"


def _md_pre(text) -> str:
    """A fenced code block holding `text` literally (its fence longer than any run of
    backticks inside, so no line of it can close the block)."""
    t = visible(text, keep_newlines=True)
    fence = "`" * max(3, max((len(r) for r in re.findall(r"`+", t)), default=0) + 1)
    return f"{fence}\n{t}\n{fence}"


def markdown(title: str, sections: list[Section]) -> str:
    out = [f"# {md_text(title)}", ""]
    for s in sections:
        out += [f"## {md_text(s.title)}", ""]
        for block in s.blocks:
            if block[0] == "p":
                out += [md_text(block[1]), ""]
            elif block[0] == "pre":
                out += [_md_pre(block[1]), ""]
            elif block[0] == "table":
                header, rows = block[1], block[2]
                out.append("| " + " | ".join(map(_md_cell, header)) + " |")
                out.append("|" + "---|" * len(header))
                out += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in rows]
                out.append("")
            elif block[0] == "img":
                out += [f"- {md_text(block[1])}: {_md_code(block[3])} (inlined in {md_text(HTML)})", ""]
    return "\n".join(out).rstrip() + "\n"


def to_html(title: str, sections: list[Section]) -> str:
    def e(text) -> str:
        return html.escape(visible(text))

    def e_pre(text) -> str:
        return html.escape(visible(text, keep_newlines=True))
    out = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
           "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}img{max-width:100%}</style>",
           "</head><body>", f"<h1>{e(title)}</h1>"]
    for s in sections:
        out.append(f"<h2>{e(s.title)}</h2>")
        for block in s.blocks:
            if block[0] == "p":
                out.append(f"<p>{e(block[1])}</p>")
            elif block[0] == "pre":
                out.append(f"<pre>{e_pre(block[1])}</pre>")
            elif block[0] == "table":
                out.append("<table><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in block[1]) + "</tr>")
                out += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in block[2]]
                out.append("</table>")
            elif block[0] == "img":
                data = base64.b64encode(block[2]).decode("ascii")
                out.append(f'<figure><img alt="{e(block[1])}" src="data:image/png;base64,{data}">'
                           f"<figcaption>{e(block[1])}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write(i: Inputs, folder: str) -> str:
    """MODEL_CARD.md and model_card.html in `folder` (the version being written); returns
    the Markdown's path."""
    import tensorflow as tf

    sections = build(i, folder)
    title = f"Model card: version {i.version} of {i.destination}"
    with tf.io.gfile.GFile(os.path.join(folder, MARKDOWN), "w") as f:
        f.write(markdown(title, sections))
    with tf.io.gfile.GFile(os.path.join(folder, HTML), "w") as f:
        f.write(to_html(title, sections))
    return os.path.join(folder, MARKDOWN)
