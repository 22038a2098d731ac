"""The DAG as the page draws it: nodes with their counts and layer, edges with the lines they carry."""

from __future__ import annotations

from typing import Any

INPUT = "input"  # the input file as an edge source (mpobs.pipeline.dag.INPUT; kept here so this module stays light)


def layers(node_ids: list[str], edges: list[dict[str, Any]]) -> dict[str, int]:
    """Longest-path layer of every node: the input is layer 0, a node sits one right of its deepest source."""
    sources: dict[str, list[str]] = {n: [] for n in node_ids}
    for e in edges:
        if e.get("to") in sources:
            sources[e["to"]].append(e.get("from", INPUT))
    out: dict[str, int] = {INPUT: 0}

    def layer(n: str, seen: frozenset[str]) -> int:
        if n in out:
            return out[n]
        if n in seen or n not in sources:  # a cycle or an unknown id: never in a compiled DAG
            return 0
        srcs = sources[n] or [INPUT]
        out[n] = 1 + max(layer(s, seen | {n}) for s in srcs)
        return out[n]

    for n in node_ids:
        layer(n, frozenset())
    return out


def build_dag(
    stats: dict[str, Any], processors_meta: list[dict[str, Any]] | None, edges: list[dict[str, Any]]
) -> dict[str, Any]:
    """Nodes (config order) and edges with counts, from a stats document and the run's edges.

    An edge from the input carries every line read; an edge from a processor
    without a route carries that processor's output; a routed edge's count is
    known only when it is its target's single input (then it is the target's
    lines in), else it is null.
    """
    procs: dict[str, Any] = stats.get("processors", {})
    meta_by_id = {m["id"]: m for m in processors_meta or []}
    ids = [m["id"] for m in processors_meta] if processors_meta else list(procs)
    lay = layers(ids, edges)
    nodes = [
        {
            "id": INPUT,
            "type": "input",
            "layer": 0,
            "lines_out": stats.get("system", {}).get("total_lines", 0),
            "name": stats.get("system", {}).get("input"),
        }
    ]
    for pid in ids:
        p = procs.get(pid, {})
        m = meta_by_id.get(pid, {})
        nodes.append(
            {
                "id": pid,
                "type": p.get("type", m.get("type")),
                "layer": lay.get(pid, 1),
                "lines_in": p.get("lines_in", 0),
                "lines_out": p.get("lines_out", 0),
                "errors": p.get("errors", 0),
                "share_of_time": p.get("share_of_time", 0.0),
                "rate_10s": p.get("rate_10s"),
                "sink": m.get("sink"),
                "routes": m.get("routes", []),
            }
        )
    inputs_of: dict[str, int] = {}
    for e in edges:
        inputs_of[e["to"]] = inputs_of.get(e["to"], 0) + 1
    out_edges = []
    for e in edges:
        src, dst, route = e.get("from", INPUT), e["to"], e.get("route")
        if src == INPUT:
            count: int | None = stats.get("system", {}).get("total_lines", 0)
        elif not route:
            count = procs.get(src, {}).get("lines_out")
        elif inputs_of.get(dst) == 1:
            count = procs.get(dst, {}).get("lines_in")
        else:
            count = None
        out_edges.append({"from": src, "to": dst, "route": route, "count": count})
    return {"nodes": nodes, "edges": out_edges}
