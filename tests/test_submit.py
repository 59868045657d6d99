"""`xfer submit` / `xfer schedule` against a local HTTP server that speaks the few REST
endpoints Kubeflow Pipelines (v2beta1) and Vertex AI (v1) use, and records what arrives.
The real kfp.Client and google-cloud-aiplatform do the talking."""
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from conftest import xfer

IMAGE = "registry.example/xfer:1.2.3"


class Recorder(BaseHTTPRequestHandler):
    calls: list = []

    def log_message(self, *args):
        pass

    def _reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method):
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw.startswith(b"{") else raw
        Recorder.calls.append({"method": method, "path": url.path, "query": parse_qs(url.query), "body": body})
        path = url.path
        if path == "/apis/v2beta1/healthz":
            return self._reply(200, {"multi_user": False, "pipeline_store": "kubeflow"})
        if path == "/apis/v2beta1/experiments" and method == "GET":
            return self._reply(200, {"experiments": [], "total_size": 0})
        if path == "/apis/v2beta1/experiments":
            return self._reply(200, {"experiment_id": "exp-7", "display_name": body["display_name"]})
        if path == "/apis/v2beta1/runs":
            return self._reply(200, {"run_id": "run-42", "display_name": body["display_name"], "state": "PENDING"})
        if path == "/apis/v2beta1/recurringruns":
            return self._reply(200, {"recurring_run_id": "rr-3", "display_name": body["display_name"]})
        m = re.fullmatch(r"/v1/projects/([^/]+)/locations/([^/]+)/models:upload", path)
        if m:
            model = f"projects/{m.group(1)}/locations/{m.group(2)}/models/pets"
            return self._reply(200, {"name": f"{model}/operations/1", "done": True, "response": {
                "@type": "type.googleapis.com/google.cloud.aiplatform.v1.UploadModelResponse",
                "model": model, "modelVersionId": "3"}})
        m = re.fullmatch(r"/v1/projects/([^/]+)/locations/([^/]+)/models/([^/@]+)(@\w+)?", path)
        if m and method == "GET":
            return self._reply(200, {"name": f"projects/{m.group(1)}/locations/{m.group(2)}/models/{m.group(3)}",
                                     "displayName": "pets", "versionId": "3"})
        m = re.fullmatch(r"/v1/projects/([^/]+)/locations/([^/]+)/(pipelineJobs|schedules)", path)
        if m and method == "POST":
            kind = m.group(3)
            return self._reply(200, {**body, "name": f"projects/{m.group(1)}/locations/{m.group(2)}/{kind}/xfer-1",
                                     "state": "PIPELINE_STATE_PENDING" if kind == "pipelineJobs" else "ACTIVE"})
        return self._reply(404, {"error": f"not served by the test server: {method} {path}"})

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")


@pytest.fixture
def server():
    Recorder.calls = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", Recorder.calls
    httpd.shutdown()


CONFIG = ["--config", "kubeflow", "--set", f"kubeflow.image={IMAGE}",
          "--set", "pipeline_root=gs://bucket/xfer/root", "--set", "name=xfer-nightly",
          "--set", "root=gs://bucket/xfer", "--set", "data.input_base=gs://bucket/data",
          "--set", "data.labels_file=gs://bucket/data/labels.txt", "--set", "push.destination=gs://bucket/serving"]


def _images(spec):
    return {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values() if "container" in e}


def test_kubeflow_submit_sends_the_compiled_spec_as_a_run(server, tmp_path):
    url, calls = server
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = xfer("submit", *CONFIG, "--target", "kubeflow", "--endpoint", url, "--experiment", "nightly",
               env={"TMPDIR": str(tmp)}).stdout
    assert sorted(p.name for p in tmp.iterdir()) == []  # the compiled spec's folder is gone
    assert f"{url}/#/runs/details/run-42" in out, out
    exp = next(c for c in calls if c["path"] == "/apis/v2beta1/experiments" and c["method"] == "POST")
    assert exp["body"]["display_name"] == "nightly"
    run = next(c for c in calls if c["path"] == "/apis/v2beta1/runs")["body"]
    assert run["experiment_id"] == "exp-7" and run["display_name"] == "xfer-nightly"
    spec = run["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == "xfer-nightly"
    # The file `xfer compile` writes, read by kfp.Client as an upload is read: the spec
    # itself, with the pipeline root as its default and for this run.
    assert spec["defaultPipelineRoot"] == "gs://bucket/xfer/root"
    assert _images(spec) == {IMAGE}
    assert {"Trainer", "Evaluator", "Pusher", "DataCheck"} <= set(spec["root"]["dag"]["tasks"])
    assert run["runtime_config"]["pipeline_root"] == "gs://bucket/xfer/root"
    # What the open-source API server accepts (apiserver/template/v2_template.go, argocompiler/dag.go).
    assert spec["schemaVersion"] == "2.1.0"
    assert not any("resolver" in e for e in spec["deploymentSpec"]["executors"].values())
    _compiled_caching_kept(spec)


def _compiled_caching_kept(spec):
    """Submit leaves each task's compiled caching alone: the steps that read a new span
    or the served model stay uncached, the rest follow config.enable_cache."""
    caching = {n: t.get("cachingOptions", {}).get("enableCache", False)
               for n, t in spec["root"]["dag"]["tasks"].items()}
    assert {n for n, on in caching.items() if not on} == {"ImportExampleGen", "ServedBaseline"}, caching


def test_kubeflow_schedule_is_a_recurring_run_with_a_six_field_cron(server):
    url, calls = server
    out = xfer("schedule", *CONFIG, "--target", "kubeflow", "--endpoint", url, "--cron", "0 3 * * *").stdout
    assert "recurringruns/details/rr-3" in out, out
    rr = next(c for c in calls if c["path"] == "/apis/v2beta1/recurringruns")["body"]
    assert rr["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
    assert rr["max_concurrency"] == "1" or rr["max_concurrency"] == 1
    assert _images(rr["pipeline_spec"]) == {IMAGE}


def test_vertex_submit_and_schedule(server, tmp_path):
    url, calls = server
    vertex = ["--target", "vertex", "--project", "my-proj", "--region", "europe-west4",
              "--service-account", "trainer@my-proj.iam.gserviceaccount.com", "--api-endpoint", url]
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = xfer("submit", *CONFIG, *vertex, env={"TMPDIR": str(tmp)}).stdout
    assert sorted(p.name for p in tmp.iterdir()) == []
    assert "projects/my-proj/locations/europe-west4/pipelineJobs/xfer-1" in out, out
    job = next(c for c in calls if c["path"].endswith("/pipelineJobs"))
    assert job["path"] == "/v1/projects/my-proj/locations/europe-west4/pipelineJobs"
    body = job["body"]
    assert body["serviceAccount"] == "trainer@my-proj.iam.gserviceaccount.com"
    assert body["labels"] == {"app": "xfer", "pipeline": "xfer-nightly"}
    assert body["runtimeConfig"]["gcsOutputDirectory"] == "gs://bucket/xfer/root"
    assert _images(body["pipelineSpec"]) == {IMAGE}
    # The same spec as Kubeflow gets.
    assert body["pipelineSpec"]["schemaVersion"] == "2.1.0"
    _compiled_caching_kept(body["pipelineSpec"])

    out = xfer("schedule", *CONFIG, *vertex, "--cron", "0 3 * * *").stdout
    sched = next(c for c in calls if c["path"].endswith("/schedules"))["body"]
    assert sched["cron"] == "0 3 * * *" and sched["maxConcurrentRunCount"] == "1"
    assert sched["createPipelineJobRequest"]["pipelineJob"]["serviceAccount"].startswith("trainer@")
    assert "schedules/xfer-1" in out


def test_local_pipeline_root_is_a_config_error_before_anything_is_sent(server):
    url, calls = server
    proc = xfer("submit", *CONFIG, "--set", "pipeline_root=/tmp/root", "--target", "kubeflow", "--endpoint", url,
                check=False)
    assert proc.returncode == 2 and "pipeline_root: '/tmp/root' is local" in proc.stderr, proc.stderr
    assert calls == []


@pytest.mark.parametrize("command", ["submit", "schedule"])
def test_template_placeholders_are_refused_before_anything_is_compiled_or_sent(server, command, tmp_path):
    url, calls = server
    cron = ["--cron", "0 3 * * *"] if command == "schedule" else []
    proc = xfer(command, "--config", "kubeflow", "--target", "kubeflow", "--endpoint", url, *cron,
                check=False, env={"XDG_STATE_HOME": str(tmp_path / "state")})
    assert proc.returncode == 2, proc.stderr
    assert f"xfer {command}: " in proc.stderr and "placeholders" in proc.stderr
    for key in ("root", "pipeline_root", "data.input_base", "data.labels_file", "push.destination",
                "kubeflow.image"):
        assert f"  - {key}: '" in proc.stderr, key
    assert "--allow-placeholders" not in proc.stderr  # compile's flag, not submit's
    assert calls == [] and not (tmp_path / "state").exists()


def _closed_port() -> int:
    """A localhost port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_line_user_error(proc, endpoint, tmp_path):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"xfer: config error: --endpoint {endpoint}: "), proc.stderr
    for noise in ("urllib3", "Retrying", "Traceback", "full trace", "Warning"):
        assert noise not in proc.stderr, proc.stderr
    assert not (tmp_path / "state").exists()  # no trace file


def test_an_endpoint_nothing_listens_on_is_one_line_within_seconds(tmp_path):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    start = time.perf_counter()
    proc = xfer("submit", *CONFIG, "--target", "kubeflow", "--endpoint", endpoint, check=False,
                env={"XDG_STATE_HOME": str(tmp_path / "state")})
    seconds = time.perf_counter() - start
    _one_line_user_error(proc, endpoint, tmp_path)
    assert "cannot connect to 127.0.0.1:" in proc.stderr and "Connection refused" in proc.stderr
    # Before compiling (about 15 s here): the command's start-up alone.
    assert seconds < 12, seconds


def test_an_endpoint_that_drops_the_connection_is_one_line_without_retries(tmp_path):
    """It accepts the connection (so the first check passes) and closes it unanswered: the
    client's first request fails once, not after urllib3's three retries."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted = []

    def drop():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(1)
            conn.close()
    threading.Thread(target=drop, daemon=True).start()
    endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        proc = xfer("submit", *CONFIG, "--target", "kubeflow", "--endpoint", endpoint, check=False,
                    env={"XDG_STATE_HOME": str(tmp_path / "state")})
    finally:
        listener.close()
    _one_line_user_error(proc, endpoint, tmp_path)
    assert "the connection failed" in proc.stderr, proc.stderr
    assert len(accepted) == 2, accepted  # the reachability check, then the one request


def test_an_endpoint_that_is_not_the_kfp_api_is_one_line_naming_the_answer(server, tmp_path):
    url, calls = server
    endpoint = f"{url}/not-the-api"
    proc = xfer("submit", *CONFIG, "--target", "kubeflow", "--endpoint", endpoint, check=False,
                env={"XDG_STATE_HOME": str(tmp_path / "state")})
    _one_line_user_error(proc, endpoint, tmp_path)
    assert "HTTP 404" in proc.stderr and "not served by the test server" in proc.stderr, proc.stderr


def test_pushed_version_registered_in_the_vertex_model_registry(server):
    from google.auth.credentials import AnonymousCredentials

    from xfer.components.model_registry import register
    url, calls = server
    name = register("gs://bucket/serving/3", {
        "project": "my-proj", "region": "us-central1", "display_name": "pets",
        "serving_container_image": "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-16:latest",
        "parent_model": "projects/my-proj/locations/us-central1/models/pets", "labels": {"team": "vision"}},
        credentials=AnonymousCredentials(), api_endpoint=url)
    upload = next(c for c in calls if c["path"].endswith("/models:upload"))
    assert upload["path"] == "/v1/projects/my-proj/locations/us-central1/models:upload"
    body = upload["body"]
    assert body["parentModel"] == "projects/my-proj/locations/us-central1/models/pets"
    model = body["model"]
    assert model["artifactUri"] == "gs://bucket/serving/3" and model["displayName"] == "pets"
    assert model["containerSpec"]["imageUri"].endswith("tf2-cpu.2-16:latest")
    assert model["labels"] == {"team": "vision"} and "v3" in model["versionAliases"]
    assert name == "projects/my-proj/locations/us-central1/models/pets"
    with pytest.raises(ValueError, match="needs push.destination on gs://"):
        register("/local/serving/3", {"project": "p", "region": "r", "display_name": "x",
                                      "serving_container_image": "i"})
