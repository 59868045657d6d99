"""Two runs side by side: what the steps ran with (their execution properties, the
config as each step received it), the metrics, recall per class and the seconds of
each step. Numbers come from each run's result.json; settings from ML Metadata."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from xfer.pipeline import run_records
from xfer.pipeline import store as mlmd

# Properties that differ on every run and say nothing about what was asked for.
EVERY_RUN = ("run_nonce", "__stateful_working_dir_index__", "__external_execution_index__")


@dataclass
class Comparison:
    settings: list = field(default_factory=list)  # [(key, left, right)] that differ
    same_settings: int = 0
    metrics: list = field(default_factory=list)   # [(name, left, right)]
    recall: list = field(default_factory=list)    # [(class, left, right)]
    seconds: list = field(default_factory=list)   # [(step, left state, left s, right state, right s)]


def _flat(prefix: str, value, out: dict) -> None:
    if isinstance(value, str) and value[:1] in "{[":
        try:
            value = json.loads(value)
        except ValueError:
            pass
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}", v, out)
    else:
        out[prefix] = value if isinstance(value, (str, int, float, bool, type(None))) else json.dumps(value)


def step_settings(store, run: run_records.Run) -> dict:
    """{step.property[.key...]: value} of the run's executions."""
    ids = [s.execution_id for s in run.steps.values() if s.execution_id is not None]
    names = {s.execution_id: s.name for s in run.steps.values()}
    out: dict = {}
    for ex in store.get_executions_by_id(ids) if ids else []:
        for key in sorted(ex.custom_properties):
            if key.startswith("__") or key in EVERY_RUN:
                continue
            _flat(f"{names[ex.id]}.{key}", mlmd.custom_property(ex, key), out)
    return {k: v for k, v in out.items() if k.rsplit(".", 1)[-1] not in EVERY_RUN}


def compare(config, left: run_records.Run, right: run_records.Run) -> Comparison:
    c = Comparison()
    a, b = run_records.with_store(mlmd.existing_store(config),
                                  lambda store: (step_settings(store, left), step_settings(store, right)))
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            c.settings.append((key, a.get(key, "-"), b.get(key, "-")))
        else:
            c.same_settings += 1
    for name, get in (("status", lambda r: r.status), ("accuracy", lambda r: r.accuracy),
                      ("the served model's accuracy", lambda r: r.baseline_accuracy),
                      ("blessed", lambda r: r.get("blessed")),
                      ("pushed version", lambda r: (r.get("pushed") or {}).get("version")),
                      ("examples", lambda r: r.get("examples")),
                      ("bad records skipped", lambda r: r.get("bad_records_skipped")),
                      ("seconds", lambda r: None if r.seconds is None else round(r.seconds, 1))):
        c.metrics.append((name, get(left), get(right)))
    recall = {}
    for side, run in ((0, left), (1, right)):
        for row in (run.get("metrics") or {}).get("recall_per_class", []):
            recall.setdefault(str(row["class"]), [None, None])[side] = row.get("candidate")
    c.recall = [(k, v[0], v[1]) for k, v in recall.items()]
    for name in list(dict.fromkeys([*left.steps, *right.steps])):
        l, r = left.steps.get(name), right.steps.get(name)
        c.seconds.append((name, l.state if l else "not run", l.seconds if l else None,
                          r.state if r else "not run", r.seconds if r else None))
    return c
