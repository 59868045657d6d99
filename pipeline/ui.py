"""`xfer ui`: a read-only web view of a root's runs (Tornado, already in the lock; pages
rendered by Jinja2 with autoescape; a few lines of plain JavaScript for live updates).

Pages: the runs table (filter by status), a run (the DAG with each step's state and
seconds, a step's views, artifact URIs and error), two runs compared, lr-find's plots.
Files: only those inside one of the store's artifacts that lie under the root, by artifact
id and a relative path; `..`, absolute paths and symlinks that lead out get 404. Every page
also carries a Content-Security-Policy that runs no inline script, so even a mistake in
escaping could not run what a class name smuggles in.
"""
from __future__ import annotations

import asyncio
import os
import threading
import urllib.parse
from typing import Optional

import tornado.web

from xfer.pipeline import html_views, run_records, run_graph
from xfer.pipeline import store as mlmd

STATUSES = ("running", "complete", "failed", "interrupted")
PAGE_CSP = ("default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
            "style-src 'unsafe-inline'; frame-src 'self'; base-uri 'none'; form-action 'self'")
FILE_CSP = "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'"
FILE_TYPES = {".png": "image/png", ".json": "application/json", ".txt": "text/plain; charset=utf-8",
              ".md": "text/plain; charset=utf-8", ".html": "text/html; charset=utf-8",
              ".pbtxt": "text/plain; charset=utf-8"}


class Site:
    """What every handler shares: the config, and the DAG drawn once."""

    def __init__(self, config):
        self.config = config
        self._graph: Optional[tuple] = None
        self._building = threading.Lock()

    def load_graph(self) -> tuple:
        """Built once (it imports TFX: seconds), at start, off the request path."""
        with self._building:
            if self._graph is None:
                try:
                    self._graph = run_graph.pipeline_edges(self.config)
                except Exception:  # noqa: BLE001 - a DAG that cannot be built now: the steps run so far
                    self._graph = ([], [])
        return self._graph

    def graph(self, run: run_records.Run) -> run_graph.Graph:
        steps, edges = self.load_graph()
        return run_graph.layout(steps, edges, extra=[s for s in run.steps if s not in steps])

    def under_root(self, path: str) -> bool:
        root = os.path.realpath(self.config.root)
        return os.path.realpath(path).startswith(root + os.sep)


def file_url(run_id: str, artifact_id: int, name: str) -> str:
    return f"/files/{artifact_id}/{urllib.parse.quote(name)}"


class Page(tornado.web.RequestHandler):
    def initialize(self, site: Site):
        self.site = site

    def set_default_headers(self):
        self.set_header("Content-Security-Policy", PAGE_CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Cache-Control", "no-store")

    async def blocking(self, fn, *args):
        """Store and artifact reads run off the event loop, so a slow view never stalls polling."""
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    def page(self, template: str, **values):
        self.finish(html_views.render(template, pipeline=self.site.config.name, **values))

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None))[1]
        text = str(exc.log_message if isinstance(exc, tornado.web.HTTPError) and exc.log_message else
                   exc if exc and status_code != 500 else self._reason)
        self.finish(html_views.render("error.html", pipeline=self.site.config.name, title=str(status_code),
                                      status=status_code, text=text))

    async def run_or_404(self, run_id: str) -> run_records.Run:
        try:
            return await self.blocking(run_records.get_run, self.site.config, run_id)
        except LookupError as e:
            raise tornado.web.HTTPError(404, str(e)) from None


class RunsPage(Page):
    async def get(self):
        wanted = self.get_argument("status", "")
        if wanted and wanted not in STATUSES:
            raise tornado.web.HTTPError(404, f"no status '{wanted}'; one of {', '.join(STATUSES)}")
        runs = await self.blocking(run_records.list_runs, self.site.config)
        shown = [r for r in runs if not wanted or r.status == wanted]
        values = dict(title="runs", runs=shown, total=len(runs), wanted=wanted, statuses=STATUSES,
                      live_url="/?" + urllib.parse.urlencode({"status": wanted, "part": "live"}))
        if self.get_argument("part", "") == "live":
            self.finish(html_views.render("runs_live.html", **values))
        else:
            self.page("runs.html", **values)


class RunPage(Page):
    async def get(self, run_id: str):
        run = await self.run_or_404(run_id)
        graph = await self.blocking(self.site.graph, run)
        values = dict(title=f"run {run.run_id}", run=run, graph=graph,
                      box=run_graph, logs=_tensorboard_logs(run), links=True,
                      live_url=f"/run/{urllib.parse.quote(run_id, safe='')}?part=live")
        if self.get_argument("part", "") == "live":
            self.finish(html_views.render("run_live.html", **values))
        else:
            self.page("run.html", **values)


class StepPage(Page):
    async def get(self, run_id: str, name: str):
        run = await self.run_or_404(run_id)
        step = run.steps.get(name)
        if step is None:
            raise tornado.web.HTTPError(404, f"run '{run.run_id}' has no step '{name}'; it has: {', '.join(run.steps)}")
        views = await self.blocking(html_views.step_views, run, step, self.site.config, self._image_src)
        self.page("step.html", title=f"{name} · run {run.run_id}", run=run, step=step, views=views,
                  file_url=file_url)

    def _image_src(self, artifact_id: int, uri: str, name: str) -> Optional[str]:
        return file_url("", artifact_id, name) if os.path.isfile(os.path.join(uri, name)) else None


class ReportPage(Page):
    """The blessing report, the model card and result.json, each on a page of its own."""

    async def get(self, run_id: str, what: str):
        run = await self.run_or_404(run_id)
        view = await self.blocking(self._view, run, what)
        self.page("report.html", title=f"{view.title} · run {run.run_id}", run=run, views=[view])

    def _view(self, run: run_records.Run, what: str) -> html_views.View:
        config = self.site.config
        if what == "result":
            return html_views.result_view(run.result)
        wanted = {"blessing": "ModelEvaluation", "model-card": "PushedModel"}[what]
        found = [(s, a) for s in run.steps.values() for t, a in s.artifacts if t == wanted]
        if not found:
            return html_views.lines_view(what, [f"run {run.run_id} has no {wanted} (the step did not run)"])
        step, artifact = found[0]
        if what == "model-card":
            return html_views.model_card_view(artifact)
        blessed = next((bool(mlmd.custom_property(a, "blessed")) for t, a in step.artifacts
                        if t == "ModelBlessing"), False)
        return html_views.blessing_view(artifact.uri, blessed, html_views.trainer_model_uri(run), config.eval)


class ComparePage(Page):
    async def get(self):
        a, b = self.get_argument("a", ""), self.get_argument("b", "")
        if not (a and b):
            runs = await self.blocking(run_records.list_runs, self.site.config)
            self.page("compare_pick.html", title="compare", runs=runs)
            return
        left, right = await self.run_or_404(a), await self.run_or_404(b)
        from xfer.pipeline.run_compare import compare

        table = await self.blocking(compare, self.site.config, left, right)
        self.page("compare.html", title=f"compare {left.run_id} and {right.run_id}", left=left, right=right, c=table)


class LrFindPage(Page):
    async def get(self):
        views = await self.blocking(html_views.lr_find_views, self.site.config.root)
        self.page("report.html", title="lr-find", run=None, views=views)


class FileHandler(Page):
    """A file inside one of the store's artifacts under the root; anything else is 404."""

    def set_default_headers(self):
        self.set_header("Content-Security-Policy", FILE_CSP)
        self.set_header("X-Content-Type-Options", "nosniff")

    async def get(self, artifact_id: str, rel: str):
        path = await self.blocking(self._resolve, int(artifact_id), rel)
        if path is None:
            raise tornado.web.HTTPError(404, "no such file in that artifact")
        kind = FILE_TYPES.get(os.path.splitext(path)[1].lower(), "application/octet-stream")
        self.set_header("Content-Type", kind)
        if kind == "application/octet-stream":
            self.set_header("Content-Disposition", "attachment")
        with open(path, "rb") as f:
            self.finish(f.read())

    def _resolve(self, artifact_id: int, rel: str) -> Optional[str]:
        rel = urllib.parse.unquote(rel)  # once more: a %2f that came through still encoded
        parts = rel.replace("\\", "/").split("/")
        if not rel or rel.startswith("/") or os.path.isabs(rel) or "\x00" in rel or ".." in parts:
            return None
        try:
            uri = run_records.artifact_uri(self.site.config, artifact_id)
        except Exception:  # noqa: BLE001 - a bad id: nothing to serve
            return None
        if not uri or "://" in uri or not self.site.under_root(uri):
            return None
        base = os.path.realpath(uri)
        path = os.path.realpath(os.path.join(base, *parts))
        if not path.startswith(base + os.sep) or not os.path.isfile(path):
            return None
        return path


class StaticScript(tornado.web.RequestHandler):
    def get(self):
        self.set_header("Content-Type", "text/javascript; charset=utf-8")
        self.set_header("X-Content-Type-Options", "nosniff")
        with open(os.path.join(os.path.dirname(__file__), "templates", "live.js"), "rb") as f:
            self.finish(f.read())


def _tensorboard_logs(run: run_records.Run) -> Optional[str]:
    trainer = run.steps.get("Trainer")
    for t, a in trainer.artifacts if trainer else []:
        if t == "ModelRun":
            return os.path.join(a.uri, "logs")
    return None


def make_app(config) -> tornado.web.Application:
    site = Site(config)
    threading.Thread(target=site.load_graph, daemon=True).start()
    s = {"site": site}
    return tornado.web.Application([
        (r"/", RunsPage, s),
        (r"/run/([^/]+)", RunPage, s),
        (r"/run/([^/]+)/step/([^/]+)", StepPage, s),
        (r"/run/([^/]+)/(blessing|model-card|result)", ReportPage, s),
        (r"/compare", ComparePage, s),
        (r"/lr-find", LrFindPage, s),
        (r"/files/([0-9]{1,12})/(.*)", FileHandler, s),
        (r"/static/live.js", StaticScript),
    ], default_handler_class=NotFound, default_handler_args=s, xsrf_cookies=False)


class NotFound(Page):
    def prepare(self):
        raise tornado.web.HTTPError(404, "no such page")


def serve(config, host: str = "127.0.0.1", port: int = 8765, ready=None) -> None:
    """Serve until interrupted; prints the URL (`ready(port)` instead, for tests)."""
    mlmd.existing_store(config)  # no runs yet: the config error, before a server starts

    async def main():
        server = make_app(config).listen(port, address=host)
        bound = next(iter(server._sockets.values())).getsockname()[1]
        if ready:
            ready(bound)
        else:
            shown = f"[{host}]" if ":" in host else host
            print(f"xfer ui: http://{shown}:{bound}/  ({config.name}, root {config.root}); Ctrl-C stops it",
                  flush=True)
        await asyncio.Event().wait()
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
