"""Bad configs and bad paths: one clear message naming the step and the problem, exit 2, no traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BAD_CONFIGS = [
    ("invalid-json", '{"processors": [\n  {"type": "uppercase", "id": "u"},\n]}', r"invalid JSON at line 3 column 1"),
    ("not-an-object", "[1, 2]", r"the top level must be an object"),
    ("no-processors", "{}", r"'processors' must be a non-empty list, got nothing"),
    (
        "unknown-type",
        {"processors": [{"type": "uppercasse", "id": "u"}]},
        r"processor 'u': unknown type 'uppercasse' \(known: counter, filter, ",
    ),
    ("missing-id", {"processors": [{"type": "uppercase"}]}, r"processor #1 \(uppercase\): missing key 'id'"),
    (
        "missing-key",
        {"processors": [{"type": "python", "id": "p"}]},
        r"processor 'p' \(python\): missing key 'function'",
    ),
    (
        "wrong-type",
        {"processors": [{"type": "tag_extractor", "id": "tags", "rules": ["a"]}]},
        r"processor 'tags' \(tag_extractor\): rules must be an object, got a list",
    ),
    (
        "wrong-type-bool",
        {"processors": [{"type": "filter", "id": "f", "pattern": "x", "invert": "yes"}]},
        r"processor 'f' \(filter\): invert must be a boolean, got a string",
    ),
    (
        "unknown-key",
        {"processors": [{"type": "filter", "id": "f", "patern": "x"}]},
        r"processor 'f' \(filter\): unknown key 'patern'",
    ),
    (
        "bad-regex",
        {"processors": [{"type": "filter", "id": "f", "pattern": "(unclosed"}]},
        r"processor 'f' \(filter\): pattern is not a valid regex \('\(unclosed'\): missing \), unterminated subpattern",
    ),
    (
        "duplicate-id",
        {"processors": [{"type": "uppercase", "id": "x"}, {"type": "lowercase", "id": "x"}]},
        r"processor 'x' \(lowercase\): duplicate id",
    ),
    (
        "unknown-input",
        {"processors": [{"type": "uppercase", "id": "u", "inputs": ["nope"]}]},
        r"processor 'u' \(uppercase\): unknown input 'nope'",
    ),
    (
        "cycle",
        {
            "processors": [
                {"type": "uppercase", "id": "a", "inputs": ["b"]},
                {"type": "lowercase", "id": "b", "inputs": ["a"]},
            ]
        },
        r"the DAG has a cycle: (a -> b -> a|b -> a -> b)",
    ),
    (
        "unknown-route",
        {
            "processors": [
                {"type": "router", "id": "r", "routes": {"x": "x"}},
                {"type": "uppercase", "id": "u", "inputs": ["r.y"]},
            ]
        },
        r"processor 'u' \(uppercase\): unknown route 'y' of router 'r' \(routes: x\)",
    ),
    (
        "route-of-non-router",
        {"processors": [{"type": "uppercase", "id": "a"}, {"type": "uppercase", "id": "u", "inputs": ["a.y"]}]},
        r"'a' is a uppercase, not a router",
    ),
    (
        "unimportable-function",
        {"processors": [{"type": "python", "id": "p", "function": "no_such_mod:f"}]},
        r"processor 'p' \(python\): cannot import module 'no_such_mod' for function 'no_such_mod:f': "
        r"ModuleNotFoundError",
    ),
    (
        "function-missing-attr",
        {"processors": [{"type": "python", "id": "p", "function": "json:nope"}]},
        r"processor 'p' \(python\): module 'json' has no attribute 'nope'",
    ),
    (
        "function-bad-ref",
        {"processors": [{"type": "python", "id": "p", "function": "just_a_name"}]},
        r"function must look like \"module:name\"",
    ),
    (
        "counter-groups",
        {"processors": [{"type": "counter", "id": "c", "by": "(a)(b)"}]},
        r"processor 'c' \(counter\): by must be \"tag\" or a regex with exactly one group",
    ),
    (
        "filter-both",
        {"processors": [{"type": "filter", "id": "f", "pattern": "a", "tag": "error"}]},
        r"give exactly one of 'pattern' \(a regex\) or 'tag'",
    ),
    (
        "router-bad-route",
        {"processors": [{"type": "router", "id": "r", "routes": {"a": 5}}]},
        r"routes.a must be a regex string or \{\"tag\": \"<tag>\"\}, got a number",
    ),
]


def write_config(tmp_path: Path, config: Any) -> Path:
    path = tmp_path / "pipeline.json"
    path.write_text(config if isinstance(config, str) else json.dumps(config))
    return path


@pytest.mark.parametrize(("config", "message"), [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_validate_rejects_bad_config(tmp_path: Path, cli: Any, config: Any, message: str) -> None:
    res = cli("validate", str(write_config(tmp_path, config)))
    err = res.stderr.decode()
    assert res.returncode == 2, err
    assert "Traceback" not in err
    assert err.startswith("mpobs: error: ")
    assert len(err.strip().splitlines()) == 1, err
    import re

    assert re.search(message, err), err


@pytest.mark.parametrize("case", ["invalid-json", "cycle", "unimportable-function"])
def test_process_rejects_bad_config_before_any_work(tmp_path: Path, cli: Any, case: str) -> None:
    config = next(c[1] for c in BAD_CONFIGS if c[0] == case)
    log = tmp_path / "in.log"
    log.write_text("a ERROR\n")
    out = tmp_path / "out.txt"
    res = cli("process", str(log), "-c", str(write_config(tmp_path, config)), "-o", str(out))
    assert res.returncode == 2
    assert b"Traceback" not in res.stderr
    assert not out.exists()


def test_validate_prints_the_dag(tmp_path: Path, cli: Any) -> None:
    config = {
        "processors": [
            {"type": "tag_extractor", "id": "tags"},
            {"type": "router", "id": "r", "routes": {"err": {"tag": "error"}}, "default": "rest"},
            {"type": "uppercase", "id": "u", "inputs": ["r.err"]},
        ]
    }
    res = cli("validate", str(write_config(tmp_path, config)))
    assert res.returncode == 0
    text = res.stdout.decode()
    assert "valid, 3 processors" in text
    assert "r (router) <- tags  routes: err, rest" in text
    assert "u (uppercase) <- r.err  [sink]" in text


def test_missing_config_file(tmp_path: Path, cli: Any) -> None:
    res = cli("validate", str(tmp_path / "nope.json"))
    assert res.returncode == 2
    assert b"cannot read it: No such file or directory" in res.stderr


def test_missing_input_file(tmp_path: Path, cli: Any) -> None:
    res = cli("process", str(tmp_path / "missing.log"))
    assert res.returncode == 2
    assert res.stderr.decode().strip() == f"mpobs: error: input {str(tmp_path / 'missing.log')!r}: no such file"


def test_input_is_a_directory(tmp_path: Path, cli: Any) -> None:
    res = cli("process", str(tmp_path))
    assert res.returncode == 2
    assert b"is a directory, not a file" in res.stderr


def test_unreadable_input_file_as_user(tmp_path: Path, cli: Any) -> None:
    log = tmp_path / "secret.log"
    log.write_text("x\n")
    log.chmod(0)
    cmd = [sys.executable, "-m", "mpobs", "process", str(log)]
    if os.geteuid() == 0:
        # Root reads any file: take away the capabilities that let it (util-linux setpriv).
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) is needed to test an unreadable file as root"
        cmd = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", *cmd]
    res = subprocess.run(cmd, capture_output=True, timeout=60)
    assert res.returncode == 2, res.stderr
    assert res.stderr.decode().strip() == f"mpobs: error: input {str(log)!r}: permission denied"


def test_unreadable_input_file(tmp_path: Path, cli: Any) -> None:
    # Root reads files whatever their mode, so make one nobody can open: a FIFO-less trick is a
    # path under a file (ENOTDIR), which fails the same way an unreadable file does.
    log = tmp_path / "plain.log"
    log.write_text("x\n")
    res = cli("process", str(log / "child.log"))
    assert res.returncode == 2
    assert b"Traceback" not in res.stderr
    assert b"input" in res.stderr


def test_output_in_missing_folder(tmp_path: Path, cli: Any) -> None:
    log = tmp_path / "in.log"
    log.write_text("a ERROR\n")
    res = cli("process", str(log), "-o", str(tmp_path / "no" / "out.txt"))
    assert res.returncode == 2
    assert b"does not exist" in res.stderr


def test_bad_option_values_exit_2(tmp_path: Path, cli: Any) -> None:
    log = tmp_path / "in.log"
    log.write_text("a\n")
    for args in (["--workers", "0"], ["--trace-sample", "0"], ["--trace-sample", "1.5"], ["--max-errors", "-1"]):
        res = cli("process", str(log), *args)
        assert res.returncode == 2, args
        assert b"Traceback" not in res.stderr
