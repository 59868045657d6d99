"""The DAG as the run page draws it, top down: each step's place (row = its depth from the
first step) and the edges between steps, from the pipeline the config builds
(pipeline.create_pipeline, the one place the DAG is written), so a step that has not
run yet still has its box."""
from __future__ import annotations

from dataclasses import dataclass

BOX_W, BOX_H, GAP_X, GAP_Y, PAD = 170, 42, 30, 20, 8
SIDE = 70  # room on the right for the edges that skip rows


@dataclass
class Box:
    name: str
    x: int
    y: int


@dataclass
class Edge:
    path: str  # SVG path data


@dataclass
class Graph:
    boxes: dict  # step name -> Box
    edges: list  # [Edge]
    width: int
    height: int


def pipeline_edges(config) -> tuple[list[str], list[tuple[str, str]]]:
    """(steps in the pipeline's order, [(upstream, downstream)])."""
    from xfer.pipeline.pipeline import create_pipeline

    p = create_pipeline(config)
    steps = [c.id for c in p.components]
    edges = [(up.id, c.id) for c in p.components for up in c.upstream_nodes]
    return steps, edges


def layout(steps: list[str], edges: list[tuple[str, str]], extra: list[str] = ()) -> Graph:
    """Rows by longest path from a source; `extra`: steps a run has that the current
    pipeline does not (a run of an older DAG), placed in a last row."""
    depth = {s: 0 for s in steps}
    for _ in steps:  # relax: a DAG of n steps settles in n rounds
        for up, down in edges:
            if up in depth and down in depth:
                depth[down] = max(depth[down], depth[up] + 1)
    last = max(depth.values(), default=-1) + 1
    for s in extra:
        if s not in depth:
            depth[s] = last
    per_row: dict[int, int] = {}
    boxes = {}
    for s in depth:
        row = depth[s]
        col = per_row.get(row, 0)
        per_row[row] = col + 1
        boxes[s] = Box(s, PAD + col * (BOX_W + GAP_X), PAD + row * (BOX_H + GAP_Y))
    lines = []
    for u, d in edges:
        if u not in boxes or d not in boxes:
            continue
        a, b = boxes[u], boxes[d]
        if depth[d] - depth[u] == 1:
            lines.append(Edge(f"M{a.x + BOX_W // 2},{a.y + BOX_H} L{b.x + BOX_W // 2},{b.y}"))
        else:  # around the right of the rows it skips
            out = max(a.x, b.x) + BOX_W + 12 + 8 * (depth[d] - depth[u])
            lines.append(Edge(f"M{a.x + BOX_W},{a.y + BOX_H // 2} C{out},{a.y + BOX_H // 2} "
                              f"{out},{b.y + BOX_H // 2} {b.x + BOX_W},{b.y + BOX_H // 2}"))
    width = PAD * 2 + max(per_row.values(), default=1) * (BOX_W + GAP_X) + SIDE
    height = PAD * 2 + (max(depth.values(), default=0) + 1) * (BOX_H + GAP_Y)
    return Graph(boxes, lines, width, height)
