"""Loading and validating a pipeline config (JSON) into a compiled DAG."""

from __future__ import annotations

import os
import sys
from typing import Any, NamedTuple

from mpobs.errors import ConfigError
from mpobs.pipeline.dag import INPUT, Node, Pipeline
from mpobs.pipeline.processors import REGISTRY, Processor, Spec
from mpobs.pipeline.processors.base import json_type

#: The original description's log-level scenario; ids are part of the contract.
DEFAULT_CONFIG: dict[str, Any] = {
    "processors": [
        {"type": "line_counter", "id": "line_counter", "format": "Line {count}: {line}"},
        {"type": "tag_extractor", "id": "tag_extractor"},
        {"type": "filter", "id": "error_filter", "tag": "error", "inputs": ["tag_extractor"]},
        {"type": "filter", "id": "warn_filter", "tag": "warn", "inputs": ["tag_extractor"]},
        {"type": "filter", "id": "info_filter", "tag": "info", "inputs": ["tag_extractor"]},
    ]
}

_COMMON_KEYS = frozenset({"type", "id", "inputs"})


def load_config(path: str | os.PathLike[str] | None) -> Pipeline:
    """Read and compile the config at ``path``; None gives the default pipeline."""
    if path is None:
        return compile_config(DEFAULT_CONFIG, source="default pipeline")
    p = os.fspath(path)
    try:
        with open(p, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        msg = f"config {str(p)!r}: cannot read it: {reason}"
        raise ConfigError(msg) from err
    import json  # here: a run of the default pipeline reads no JSON, and this import is 1-2 ms of start-up

    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        msg = f"config {str(p)!r}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}"
        raise ConfigError(msg) from err
    except RecursionError as err:
        raise ConfigError(f"config {str(p)!r}: JSON nested too deeply") from err
    return compile_config(data, source=str(p), base_dir=os.path.dirname(os.path.realpath(p)))


def compile_config(data: Any, source: str = "config", base_dir: str | None = None) -> Pipeline:
    """Validate a parsed config and build the processors and the DAG."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be an object with a 'processors' list, got {json_type(data)}")
    unknown = set(data) - {"processors"}
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key {sorted(unknown)[0]!r} (only 'processors' is known)")
    raw_list = data.get("processors")
    if not isinstance(raw_list, list) or not raw_list:
        got = (
            "nothing"
            if raw_list is None
            else json_type(raw_list)
            if not isinstance(raw_list, list)
            else "an empty list"
        )
        raise ConfigError(f"{source}: 'processors' must be a non-empty list, got {got}")
    if base_dir is not None and base_dir not in sys.path:
        # User functions live next to their config.
        sys.path.insert(0, base_dir)

    procs: list[Processor] = []
    raw_inputs: list[list[str] | None] = []
    for i, raw in enumerate(raw_list):
        proc, inputs = _build_processor(raw, i, source)
        if any(p.id == proc.id for p in procs):
            raise ConfigError(f"processor {proc.id!r} ({proc.type_name}): duplicate id; ids must be unique")
        procs.append(proc)
        raw_inputs.append(inputs)
    pipeline = _wire(procs, raw_inputs)
    # What builds it again elsewhere (a Dask worker): the config and where its functions live.
    pipeline.spec = PipelineSpec(data, source, base_dir)
    return pipeline


class PipelineSpec(NamedTuple):
    """A compiled config's source: ``compile_config(*spec)`` builds the same pipeline in another process."""

    data: Any
    source: str
    base_dir: str | None

    @property
    def token(self) -> str:
        """The same for the same config and folder, on every machine."""
        import hashlib
        import json

        text = json.dumps([self.data, self.base_dir], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def build(self) -> Pipeline:
        return compile_config(self.data, self.source, self.base_dir)


def _build_processor(raw: Any, i: int, source: str) -> tuple[Processor, list[str] | None]:
    where = f"{source}: processor #{i + 1}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be an object, got {json_type(raw)}")
    ptype = raw.get("type")
    if not isinstance(ptype, str):
        raise ConfigError(f"{where}: missing key 'type'" if ptype is None else f"{where}: type must be a string")
    pid = raw.get("id")
    if not isinstance(pid, str) or not pid:
        problem = "missing key 'id'" if pid is None else f"id must be a non-empty string, got {json_type(pid)}"
        raise ConfigError(f"{where} ({ptype}): {problem}")
    if "." in pid or pid == INPUT:
        raise ConfigError(f"processor {pid!r} ({ptype}): id must not contain '.' nor be {INPUT!r}")
    cls = REGISTRY.get(ptype)
    if cls is None:
        known = ", ".join(sorted(REGISTRY))
        raise ConfigError(f"processor {pid!r}: unknown type {ptype!r} (known: {known})")
    spec = Spec(raw, pid, ptype)
    unknown = set(raw) - _COMMON_KEYS - cls.keys
    if unknown:
        allowed = ", ".join(sorted(cls.keys)) or "none"
        raise spec.error(f"unknown key {sorted(unknown)[0]!r} (keys of {ptype}: {allowed})")
    inputs = spec.get("inputs", list, None)
    if inputs is not None and (not inputs or not all(isinstance(x, str) for x in inputs)):
        raise spec.error("inputs must be a non-empty list of processor ids")
    return cls(pid, spec), inputs


def _wire(procs: list[Processor], raw_inputs: list[list[str] | None]) -> Pipeline:
    by_id = {p.id: i for i, p in enumerate(procs)}
    nodes: list[Node] = []
    for i, (proc, inputs) in enumerate(zip(procs, raw_inputs)):
        edges: list[tuple[str, str | None]]
        if inputs is None:
            edges = [(INPUT, None)] if i == 0 else [(procs[i - 1].id, None)]
        else:
            edges = [_parse_input(proc, ref, by_id, procs) for ref in inputs]
        nodes.append(Node(i, proc, edges))
    return Pipeline(nodes)


def _parse_input(proc: Processor, ref: str, by_id: dict[str, int], procs: list[Processor]) -> tuple[str, str | None]:
    where = f"processor {proc.id!r} ({proc.type_name})"
    if ref == INPUT:
        return (INPUT, None)
    src, dot, route = ref.partition(".")
    if src not in by_id:
        raise ConfigError(f"{where}: unknown input {ref!r} (no processor has id {src!r})")
    if not dot:
        return (src, None)
    upstream = procs[by_id[src]]
    if not upstream.routes:
        raise ConfigError(f"{where}: unknown input {ref!r}: {src!r} is a {upstream.type_name}, not a router")
    if route not in upstream.routes:
        known = ", ".join(upstream.routes)
        raise ConfigError(f"{where}: unknown route {route!r} of router {src!r} (routes: {known})")
    return (src, route)
