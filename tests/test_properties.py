"""Property tests: any bytes give one process's output; any JSON gives a pipeline or a clear error."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mpobs.errors import ConfigError
from mpobs.pipeline.config import DEFAULT_CONFIG, compile_config
from mpobs.testing import run_pipeline
from tests.reference import default_pipeline

LOG_BYTES = st.lists(
    st.one_of(
        st.binary(max_size=60),
        st.sampled_from([b"ERROR x", b"WARN y", b"WARNING", b"INFO", b"DEBUG z", b"\r", b"\n", b"\x00", b"\xff"]),
    ),
    max_size=200,
).map(lambda parts: b"\n".join(parts))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=LOG_BYTES, workers=st.integers(1, 3), task=st.sampled_from([64, 200, 1 << 20]))
def test_random_bytes_give_the_single_process_output(data: bytes, workers: int, task: int) -> None:
    from mpobs.inputs.decoders import sniff

    assume(sniff(data[:6]) is None)  # bytes that start like gzip, bzip2, xz or zstd are read as such (test_inputs)
    result = run_pipeline(DEFAULT_CONFIG, data, workers=workers, task_bytes=task, batch_lines=3)
    assert result.output == default_pipeline(data)[0]


PROC_TYPES = [
    "line_counter",
    "uppercase",
    "lowercase",
    "filter",
    "tag_extractor",
    "router",
    "counter",
    "python",
    "nope",
    3,
    None,
]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
PROCESSOR = st.fixed_dictionaries(
    {"type": st.sampled_from(PROC_TYPES), "id": st.sampled_from(["a", "b", "c", "", 1])},
    optional={
        "inputs": st.lists(st.sampled_from(["a", "b", "c", "input", "a.x", "zz"]), max_size=3) | JSON_VALUES,
        "pattern": st.sampled_from(["a", "(", "[x]", ""]) | JSON_VALUES,
        "tag": st.text(max_size=5) | JSON_VALUES,
        "format": st.sampled_from(["{line}", "{count}", "{", "{x}", "%s {line}"]) | JSON_VALUES,
        "routes": st.dictionaries(
            st.sampled_from(["x", "y", "a.b", ""]), st.sampled_from(["a", "(", {"tag": "t"}, 5]), max_size=2
        )
        | JSON_VALUES,
        "rules": st.dictionaries(st.text(max_size=3), st.sampled_from(["a", "(", 1]), max_size=2) | JSON_VALUES,
        "by": st.sampled_from(["tag", "(a)", "a", "(a)(b)"]) | JSON_VALUES,
        "function": st.sampled_from(["json:dumps", "json:nope", "nomod:x", "bad"]) | JSON_VALUES,
        "default": JSON_VALUES,
        "extra": JSON_VALUES,
    },
)
CONFIGS = st.one_of(
    JSON_VALUES,
    st.fixed_dictionaries({"processors": st.lists(PROCESSOR, max_size=4)}),
    st.fixed_dictionaries({"processors": st.lists(PROCESSOR, min_size=1, max_size=4), "x": JSON_VALUES}),
)


@settings(max_examples=400, deadline=None)
@given(config=CONFIGS)
def test_random_json_config_is_a_pipeline_or_a_config_error(config: Any) -> None:
    try:
        pipeline = compile_config(json.loads(json.dumps(config)))
    except ConfigError as err:
        message = str(err)
        assert message and "\n" not in message
        return
    assert pipeline.order and pipeline.sinks
