"""Running `postillion ctl` as a command, and checking its --json output
against docs/ctl-schema.json (the one place the JSON shapes are written)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jsonschema

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "ctl-schema.json"
SCHEMA: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
#: Longest one ctl command may take (its own socket timeout is 30 s).
TIMEOUT = 40.0


def validate(verb: str, value: Any) -> Any:
    """`value` checked against the verb's schema; returned for more checks."""
    schema = {"$defs": SCHEMA["$defs"], **SCHEMA["verbs"][verb]}
    jsonschema.Draft202012Validator(schema).validate(value)
    return value


def ctl(spool: Path, *words: str, as_json: bool = False,
        prefix: Sequence[str] = (sys.executable, "-m", "postillion.cli"),
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [*prefix, "ctl", "-s", str(spool), *(["--json"] if as_json else []), *words]
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, env=env)


def ok(spool: Path, *words: str, **kw: Any) -> str:
    done = ctl(spool, *words, **kw)
    assert done.returncode == 0, (words, done.returncode, done.stdout, done.stderr)
    return done.stdout


def ok_json(spool: Path, verb: str, *args: str, **kw: Any) -> Any:
    """`ctl --json VERB ARGS`, exit 0, its output valid for the verb."""
    return validate(verb, json.loads(ok(spool, *verb.split(), *args, as_json=True, **kw)))


def until(check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.1)
    return found
