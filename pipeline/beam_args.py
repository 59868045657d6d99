"""Beam arguments checked with Beam's own parser before any step runs.

Beam drops a flag it does not know with a warning ("Discarding unparseable args") and
runs on (apache_beam/options/pipeline_options.py, get_all_options), so `--regon=...` or
`--max_num_worker=3` would start a Dataflow job in the default region with the default
workers. Here every flag of `beam_pipeline_args`, and every flag `kubeflow.dataflow`
compiles to, is parsed by PipelineOptions as every registered options class declares it
(standard, Google Cloud, worker, setup, direct, portable ...): an unknown flag, a bad
value, or a Dataflow job without what Dataflow needs fails with one line naming it.
"""
from __future__ import annotations

import contextlib
import difflib
import io
import logging

from xfer.pipeline.config import ConfigError


def _known_flags(options) -> list[str]:
    """Every --flag some PipelineOptions class declares (what get_all_options parses with)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    known = []
    for view in PipelineOptions.__subclasses__():
        known += [f"--{name}" for name in options.view_as(view).get_all_options(current_only=True)]
    return known


def parse(args: list[str], key: str):
    """`args` as Beam's PipelineOptions, or ConfigError naming `key` and the flag."""
    from apache_beam.options.pipeline_options import PipelineOptions

    for i, a in enumerate(args):
        # --name=value, or --name then its value as the next argument (argparse takes both)
        follows_flag = i > 0 and isinstance(args[i - 1], str) and args[i - 1].startswith("--") \
            and "=" not in args[i - 1]
        if not isinstance(a, str) or not (a.startswith("--") or follows_flag):
            raise ConfigError(f"{key}: {a!r} is not a --flag=value; Beam takes each argument as --name=value")
    options = PipelineOptions(list(args))
    err = io.StringIO()
    quiet = logging.getLogger("apache_beam.options.pipeline_options")
    level = quiet.level
    try:
        quiet.setLevel(logging.ERROR)  # its "Discarding unparseable args" warning: we say more, below
        with contextlib.redirect_stderr(err):  # argparse prints its usage, then exits
            retained = options.get_all_options(retain_unknown_options=True)
            known = options.get_all_options()
    except SystemExit:
        last = (err.getvalue().strip().splitlines() or ["a value Beam cannot parse"])[-1]
        raise ConfigError(f"{key}: {last.split('error: ', 1)[-1]}") from None
    finally:
        quiet.setLevel(level)
    unknown = [name for name in retained if name not in known]
    if unknown:
        flag = next(a.split("=", 1)[0] for a in args if a.split("=", 1)[0].lstrip("-") in unknown)
        close = difflib.get_close_matches(flag, _known_flags(options), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{key}: {flag} is not a Beam pipeline option{hint}; Beam would drop it and run without it")
    return options


def check_dataflow(args: list[str], key: str = "kubeflow.dataflow") -> None:
    """The Dataflow job's args, parsed, and read back through the views the Dataflow
    runner reads them with: what it needs is there and well formed."""
    from apache_beam.options.pipeline_options import (GoogleCloudOptions, SetupOptions, StandardOptions,
                                                      WorkerOptions)

    options = parse(args, key)
    cloud, worker, setup = (options.view_as(GoogleCloudOptions), options.view_as(WorkerOptions),
                            options.view_as(SetupOptions))
    if options.view_as(StandardOptions).runner != "DataflowRunner":
        raise ConfigError(f"{key}: the runner is {options.view_as(StandardOptions).runner!r}, not DataflowRunner")
    for name, value in (("project", cloud.project), ("region", cloud.region)):
        if not value:
            raise ConfigError(f"{key}.{name}: empty; Dataflow needs the {name}")
    if not (cloud.temp_location or "").startswith("gs://"):
        raise ConfigError(f"{key}.temp_location: {cloud.temp_location!r}; Dataflow's temporary files go to a "
                          f"gs:// folder, e.g. gs://bucket/tmp")
    if not worker.sdk_container_image:
        raise ConfigError(f"{key}: no worker image; set kubeflow.image (the steps' code runs in it on Dataflow)")
    if worker.max_num_workers is not None and worker.max_num_workers < 1:
        raise ConfigError(f"{key}.max_num_workers: {worker.max_num_workers}; 1 or more")
    # The steps' code is in the image: a setup file or requirements would build and stage
    # a second copy of it at every job start.
    for name in ("setup_file", "requirements_file", "extra_packages"):
        if getattr(setup, name):
            raise ConfigError(f"{key}: --{name} with kubeflow.image; the image already holds the code, drop it")
