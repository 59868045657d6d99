"""Submit and schedule the compiled pipeline on Kubeflow Pipelines v2 or Vertex AI.

Each gets the file `xfer compile --target TARGET` writes: Kubeflow the PipelineSpec YAML
(read by kfp.Client as a user's upload is read, sent inline in a run or recurring run,
REST v2beta1, with the run's pipeline root), Vertex the PipelineJob
(google-cloud-aiplatform). Nothing is compiled or sent while the config holds template
placeholders, and an endpoint that does not answer is one line naming it, in seconds.
"""
from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from dataclasses import dataclass
from typing import Iterator, Optional
from urllib.parse import urlsplit

from xfer.pipeline.config import Config, ConfigError


@dataclass
class Submitted:
    target: str
    name: str
    url: str

    def line(self) -> str:
        return f"submitted {self.name} to {self.target}: {self.url}"


def kfp_cron(cron: str) -> str:
    """KFP wants six fields (seconds first); users write the usual five."""
    fields = cron.split()
    if len(fields) == 5:
        return "0 " + cron.strip()
    if len(fields) == 6:
        return cron.strip()
    raise ConfigError(f"--cron '{cron}': give five fields (minute hour day month weekday), e.g. '0 3 * * *'")


class EndpointUnreachable(ConfigError):
    """--endpoint names no KFP API this machine reaches: the user's to fix, no trace file."""


# A refused or silent endpoint fails within seconds: one connection attempt, no retries
# (urllib3's default retries three times, printing a warning each time).
CONNECT_SECONDS = 5
READ_SECONDS = 60
ENDPOINT_HINT = ("check the URL (the KFP API, e.g. https://HOST/pipeline) and that this machine "
                 "reaches it (e.g. kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80, "
                 "then --endpoint http://localhost:8080)")


def _check_config(config: Config, command: str) -> None:
    """What makes a submission useless, found before anything is compiled or sent."""
    from xfer.pipeline.runners import refuse_placeholders

    refuse_placeholders(config, command)
    if "://" not in (config.pipeline_root or "") or config.pipeline_root.startswith("file://"):
        raise ConfigError(f"pipeline_root: '{config.pipeline_root}' is local; a cluster's steps cannot "
                          f"reach it. Set pipeline_root to a gs:// (or other object store) path")


def check_endpoint(endpoint: str) -> None:
    """Connect once to the endpoint's host and port, as kfp.Client would (it adds https://
    to a bare host), so an unreachable one is one line naming it, in seconds."""
    url = urlsplit(endpoint if endpoint.startswith("http") else "https://" + endpoint)
    try:
        host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    except ValueError as e:  # a port that is not a number
        raise EndpointUnreachable(f"--endpoint {endpoint}: {e}; {ENDPOINT_HINT}") from None
    if not host:
        raise EndpointUnreachable(f"--endpoint {endpoint}: no host in it; {ENDPOINT_HINT}")
    try:
        socket.create_connection((host, port), timeout=CONNECT_SECONDS).close()
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        raise EndpointUnreachable(f"--endpoint {endpoint}: cannot connect to {host}:{port} "
                                  f"({reason}); {ENDPOINT_HINT}") from None


@contextlib.contextmanager
def _compiled(config: Config, target: str, command: str) -> Iterator[str]:
    """The compiled file, as `xfer compile --target TARGET` writes it, in a folder that is
    removed when the submission is done, sent or not."""
    from xfer.pipeline.runners import compile_kubeflow

    with tempfile.TemporaryDirectory(prefix="xfer-compiled-") as folder:
        # Kubeflow: the PipelineSpec YAML a user would upload (kfp.Client reads .yaml only).
        name = "pipeline.yaml" if target == "kubeflow" else "pipeline.json"
        yield compile_kubeflow(config, os.path.join(folder, name), target, command=command)


def _labels(config: Config) -> dict:
    return {"app": "xfer", "pipeline": config.name}


def _bound(client) -> None:
    """One attempt per request, connect and read timeouts: set on the urllib3 pool manager
    that all of the client's service APIs share, whose pools are made at the first request."""
    import urllib3

    pools = getattr(getattr(getattr(getattr(client, "_healthz_api", None), "api_client", None),
                            "rest_client", None), "pool_manager", None)
    if pools is not None:
        pools.connection_pool_kw["retries"] = urllib3.Retry(total=None, connect=0, read=0, status=0,
                                                            other=0, redirect=5)
        pools.connection_pool_kw["timeout"] = urllib3.Timeout(connect=CONNECT_SECONDS, read=READ_SECONDS)


def _kfp_client(endpoint: str):
    """kfp.Client whose every request is tried once, within bounded time."""
    import warnings

    import kfp

    class BoundedClient(kfp.Client):
        # The constructor asks the server's health (when no KFP context names a namespace):
        # five attempts 5 s apart, each logged with a trace. Here: one, after bounding.
        def get_kfp_healthz(self, sleep_duration: int = 5):
            _bound(self)
            return self._healthz_api.healthz_service_get_healthz()

    with warnings.catch_warnings():  # "only works with KFP v2.0.0-beta.2 and later": said in the docs
        warnings.simplefilter("ignore", FutureWarning)
        client = BoundedClient(host=endpoint)
    _bound(client)
    return client


def submit_kubeflow(config: Config, endpoint: str, experiment: str, *,
                    cron: Optional[str] = None) -> Submitted:
    import kfp_server_api
    import urllib3

    _check_config(config, "schedule" if cron else "submit")
    check_endpoint(endpoint)
    with _compiled(config, "kubeflow", "schedule" if cron else "submit") as spec_path:
        name = config.name
        try:
            client = _kfp_client(endpoint)
            exp = client.create_experiment(name=experiment)  # returns the existing one by that name
            common = dict(experiment_id=exp.experiment_id, job_name=name, pipeline_package_path=spec_path,
                          # None: each task keeps its compiled caching (config.enable_cache, and off for
                          # the steps that read new spans or the served model); a value here would
                          # overwrite every task's (kfp/client/client.py, _override_caching_options).
                          params=None, pipeline_root=config.pipeline_root, enable_caching=None)
            if cron:
                rr = client.create_recurring_run(cron_expression=kfp_cron(cron), max_concurrency=1,
                                                 no_catchup=True, **common)
                return Submitted("kubeflow", name,
                                 f"{endpoint.rstrip('/')}/#/recurringruns/details/{rr.recurring_run_id}")
            run = client.run_pipeline(**common)
            return Submitted("kubeflow", name, f"{endpoint.rstrip('/')}/#/runs/details/{run.run_id}")
        except urllib3.exceptions.HTTPError as e:  # refused, reset or silent after connecting
            reason = getattr(e, "reason", None) or e
            raise EndpointUnreachable(f"--endpoint {endpoint}: the connection failed ({reason}); "
                                      f"{ENDPOINT_HINT}") from None
        except kfp_server_api.ApiException as e:
            if e.status is None or not 400 <= e.status < 500:
                raise
            body = " ".join(str(e.body or "").split())[:200]
            raise ConfigError(f"--endpoint {endpoint}: the server refused the request: HTTP {e.status} "
                              f"{e.reason}: {body}; check the URL is the KFP API (e.g. https://HOST/pipeline) "
                              f"and your access to it") from None


def submit_vertex(config: Config, project: str, region: str, *, service_account: Optional[str] = None,
                  cron: Optional[str] = None, api_endpoint: Optional[str] = None) -> Submitted:
    """A Vertex AI PipelineJob (or a schedule of it). `api_endpoint` points at another
    Vertex endpoint (a private one); a plain http:// endpoint is a local test server,
    which gets anonymous credentials rather than the user's."""
    from google.cloud import aiplatform

    _check_config(config, "schedule" if cron else "submit")
    with _compiled(config, "vertex", "schedule" if cron else "submit") as path:
        credentials = None
        init = dict(project=project, location=region)
        if api_endpoint:
            init.update(api_endpoint=api_endpoint, api_transport="rest")
            if api_endpoint.startswith("http://"):
                from google.auth.credentials import AnonymousCredentials
                credentials = AnonymousCredentials()
        aiplatform.init(credentials=credentials, **init)
        pipeline_job = aiplatform.PipelineJob(
            display_name=config.name, template_path=path, pipeline_root=config.pipeline_root,
            # None, as for Kubeflow: aiplatform would otherwise overwrite every task's caching.
            enable_caching=None, labels=_labels(config), project=project, location=region,
            credentials=credentials)
        if cron:
            schedule = pipeline_job.create_schedule(cron=cron, display_name=f"{config.name}-schedule",
                                                    max_concurrent_run_count=1, service_account=service_account)
            return Submitted("vertex", config.name, schedule.resource_name)
        pipeline_job.submit(service_account=service_account)
        return Submitted("vertex", config.name, pipeline_job.resource_name)
