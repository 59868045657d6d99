"""What `from xfer import views` returns in a notebook: the renderer's HTML
(pipeline/html_views.py) in an object Jupyter draws through `_repr_html_`, plots inlined."""
from __future__ import annotations

from typing import Union

from xfer.pipeline import html_views, run_graph, run_records
from xfer.pipeline.config import load_config

ConfigLike = Union[str, object]  # a YAML file or a shipped config's name, or a loaded config


class HtmlPage:
    def __init__(self, title: str, html: str):
        self.title, self.html = title, html

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return f"<xfer view: {self.title} ({len(self.html)} characters of HTML; shown in a notebook)>"


def _config(config: ConfigLike, overrides=()):
    return load_config(config, list(overrides)) if isinstance(config, str) else config


def _page(title: str, **values) -> HtmlPage:
    values.setdefault("views", [])
    return HtmlPage(title, html_views.render("notebook.html", title=title, links=False, live_url="",
                                             box=run_graph, **values))


def run(run_id: str = "latest", config: ConfigLike = "demo", overrides=()) -> HtmlPage:
    """A run: the DAG with each step's state and seconds, the error of a failed step, the
    blessing report and the model card."""
    config = _config(config, overrides)
    r = run_records.get_run(config, run_id)
    try:
        steps, edges = run_graph.pipeline_edges(config)
    except Exception:  # noqa: BLE001 - the DAG cannot be built now: the steps this run has
        steps, edges = list(r.steps), []
    views = []
    for step in r.steps.values():
        views += [v for v in html_views.step_views(r, step, config, html_views.inline_image)
                  if v.title in ("Blessing report", "Model card")]
    views.append(html_views.result_view(r.result))
    return _page(f"run {r.run_id}", run=r, graph=run_graph.layout(steps, edges, extra=list(r.steps)),
                 logs=None, views=views)


def step(run_id: str, name: str, config: ConfigLike = "demo", overrides=()) -> HtmlPage:
    """One step's views (statistics, schema, curves, the confusion matrix, ...), plots inlined."""
    config = _config(config, overrides)
    r = run_records.get_run(config, run_id)
    if name not in r.steps:
        raise LookupError(f"run '{r.run_id}' has no step '{name}'; it has: {', '.join(r.steps)}")
    return _page(f"{name} of run {r.run_id}",
                 views=html_views.step_views(r, r.steps[name], config, html_views.inline_image))


def runs(config: ConfigLike = "demo", overrides=()) -> HtmlPage:
    config = _config(config, overrides)
    found = run_records.list_runs(config)
    return _page(f"runs of {config.name}", runs=found, total=len(found), wanted="")


def compare(a: str, b: str, config: ConfigLike = "demo", overrides=()) -> HtmlPage:
    from xfer.pipeline.run_compare import compare as compare_runs

    config = _config(config, overrides)
    left, right = run_records.get_run(config, a), run_records.get_run(config, b)
    c = compare_runs(config, left, right)
    body = html_views.ENV.get_template("compare.html").blocks["main"]
    html = "".join(body(html_views.ENV.get_template("compare.html").new_context(
        {"left": left, "right": right, "c": c, "pipeline": config.name, "title": "compare"})))
    return HtmlPage(f"compare {left.run_id} and {right.run_id}", f'<div class="xfer-views">{html}</div>')
