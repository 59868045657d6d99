"""The Beam steps in Beam's two local modes: `in_memory` (one process, the default) against
`multi_processing` with 2 worker processes, at 20,000 and 100,000 images.

usage: python bench/beam_modes.py WORK [--sizes 20000,100000]   (prints a Markdown section)

Each mode runs the same steps the same way as bench/scale.py (each in a process of its
own, on the same data), with `beam_pipeline_args` set; peak memory is of the whole
process tree, so it includes multi_processing's worker processes. CPU % is CPU seconds
of the tree over the step's wall seconds (200% = both cores of this machine busy).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.scale import BEAM, measure  # noqa: E402

MODES = {  # name -> beam_pipeline_args, as a --set value
    "in_memory": "beam_pipeline_args=[--direct_running_mode=in_memory]",
    "multi_processing x2": "beam_pipeline_args=[--direct_running_mode=multi_processing, --direct_num_workers=2]",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work")
    parser.add_argument("--sizes", default="20000,100000")
    args = parser.parse_args()
    work = Path(args.work).resolve() / "scale"  # the same data folders as bench/scale.py
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {}
    for n in sizes:
        for mode, sets in MODES.items():
            load = os.getloadavg()[0]  # a shared machine's other work slows either mode: say how much there was
            results[n, mode] = {**measure(work, n, (sets,), tag="-" + mode.split()[0]), "load": load}
            for step in BEAM:  # as measured, so an interrupted run keeps what it had
                r = results[n, mode][step]
                print(f"[beam_modes] {n} {mode} {step}: {r['seconds']:.1f} s, peak {r['peak_gb']:.2f} GB, "
                      f"CPU {100 * r['cpu_seconds'] / max(r['seconds'], 1e-9):.0f}% (load average {load:.1f} "
                      f"at the start)", flush=True)
    print(report(sizes, results))


def report(sizes: list[int], results: dict) -> str:
    """The table: per size and step, each mode's seconds, peak GB and CPU %, then
    multi_processing's time over in_memory's."""
    a_mode, b_mode = list(MODES)
    lines = [f"| images | step | {a_mode}: s | peak GB | CPU % | {b_mode}: s | peak GB | CPU % "
             f"| time {b_mode.split()[0]} / {a_mode} |",
             "| --- " * 9 + "|"]
    for n in sizes:
        totals = {m: 0.0 for m in MODES}
        for step in BEAM:
            cells = []
            for m in MODES:
                r = results[n, m][step]
                totals[m] += r["seconds"]
                cells.append(f"{r['seconds']:.1f} | {r['peak_gb']:.2f} | {100 * r['cpu_seconds'] / max(r['seconds'], 1e-9):.0f}")
            ratio = results[n, b_mode][step]["seconds"] / max(results[n, a_mode][step]["seconds"], 1e-9)
            lines.append(f"| {n:,} | {step} | {' | '.join(cells)} | {ratio:.2f} |")
        lines.append(f"| {n:,} | **the four steps** | {totals[a_mode]:.1f} | | | {totals[b_mode]:.1f} | | "
                     f"| {totals[b_mode] / max(totals[a_mode], 1e-9):.2f} |")
    return "\n".join([
        "### Beam's local modes (`python bench/beam_modes.py runs/bench`)",
        "",
        "The Beam steps on the bench's 96 px digit JPEGs (shards of 2,000), each step's process alone, with "
        f"`beam_pipeline_args` {MODES[a_mode].split('=', 1)[1]} against {MODES[b_mode].split('=', 1)[1]}; "
        "peak of the process tree (multi_processing's workers included), CPU % of one core:",
        "",
        *lines,
        "",
        "Load average (1 min) of the machine as each ran: " + ", ".join(
            f"{n:,} {m} {results[n, m]['load']:.1f}" for n in sizes for m in MODES if "load" in results[n, m]) + ".",
        "",
    ])


if __name__ == "__main__":
    main()
