"""Submit and schedule the compiled pipeline on Kubeflow Pipelines v2 or Vertex AI.

Both take the same file `xfer compile` writes (KubeflowV2DagRunner's PipelineJob JSON):
Kubeflow gets its pipelineSpec inline in a run or recurring run (kfp.Client, REST
v2beta1), Vertex gets the whole PipelineJob (google-cloud-aiplatform).
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from typing import Iterator, Optional

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


@contextlib.contextmanager
def _compiled(config: Config) -> Iterator[tuple[dict, str]]:
    """The compiled job, and a folder holding it as pipeline.json; the folder is removed
    when the submission is done, sent or not."""
    from xfer.pipeline.runners import compile_kubeflow

    if "://" not in (config.pipeline_root or "") or config.pipeline_root.startswith("file://"):
        raise ConfigError(f"pipeline_root: '{config.pipeline_root}' is local; a cluster's steps cannot "
                          f"reach it. Set pipeline_root to a gs:// (or other object store) path")
    with tempfile.TemporaryDirectory(prefix="xfer-compiled-") as folder:
        path = compile_kubeflow(config, os.path.join(folder, "pipeline.json"))
        with open(path) as f:
            job = json.load(f)
        yield job, folder


def _labels(config: Config) -> dict:
    return {"app": "xfer", "pipeline": config.name}


def submit_kubeflow(config: Config, endpoint: str, experiment: str, *,
                    cron: Optional[str] = None) -> Submitted:
    import kfp

    with _compiled(config) as (job, folder):
        spec_path = os.path.join(folder, "pipeline_spec.yaml")  # kfp.Client wants .yaml; JSON is YAML
        with open(spec_path, "w") as f:
            json.dump(job["pipelineSpec"], f)
        params = job.get("runtimeConfig", {}).get("parameterValues") or None
        client = kfp.Client(host=endpoint)
        exp = client.create_experiment(name=experiment)  # returns the existing one by that name
        name = config.name
        common = dict(experiment_id=exp.experiment_id, job_name=name, pipeline_package_path=spec_path,
                      # None: each task keeps its compiled caching (config.enable_cache, and off for
                      # the steps that read new spans or the served model); a value here would
                      # overwrite every task's (kfp/client/client.py, _override_caching_options).
                      params=params, pipeline_root=config.pipeline_root, enable_caching=None)
        if cron:
            rr = client.create_recurring_run(cron_expression=kfp_cron(cron), max_concurrency=1,
                                             no_catchup=True, **common)
            return Submitted("kubeflow", name, f"{endpoint.rstrip('/')}/#/recurringruns/details/{rr.recurring_run_id}")
        run = client.run_pipeline(**common)
        return Submitted("kubeflow", name, f"{endpoint.rstrip('/')}/#/runs/details/{run.run_id}")


def submit_vertex(config: Config, project: str, region: str, *, service_account: Optional[str] = None,
                  cron: Optional[str] = None, api_endpoint: Optional[str] = None) -> Submitted:
    """A Vertex AI PipelineJob (or a schedule of it). `api_endpoint` points at another
    Vertex endpoint (a private one); a plain http:// endpoint is a local test server,
    which gets anonymous credentials rather than the user's."""
    from google.cloud import aiplatform

    with _compiled(config) as (job, folder):
        path = os.path.join(folder, "pipeline.json")
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
