"""What ``bis``'s commands share: reading ``KEY=VALUE`` inputs, printing JSON, exit codes."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_UNKNOWN_SIGNATURE = 4


class UsageError(Exception):
    """A command-line value the CLI cannot use (exit code 2)."""


# -- inputs -------------------------------------------------------------------------------------
def _reject_constant(name: str) -> Any:
    raise ValueError(name)  # NaN, Infinity: not JSON, keep the text


def parse_value(text: str) -> Any:
    """A value of ``KEY=VALUE``: JSON when it parses (``3``, ``true``, ``[1, 2]``, ``"3"``), else the text."""
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        return text
    if isinstance(value, float) and not math.isfinite(value):  # 1e999
        return text
    return value


def parse_inputs(pairs: list[str], data: str | None, signature: str) -> dict[str, Any]:
    """The inputs of ``bis run SIGNATURE``: ``--data`` (JSON text, ``@file`` or ``@-`` for stdin;
    a whole ``/run`` body, with its ``SIGNATURE``, is taken when it names the same endpoint), then
    each ``KEY=VALUE`` over it."""
    inputs: dict[str, Any] = {}
    if data is not None:
        if data.startswith("@"):
            source = data[1:]
            try:
                data = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
            except OSError as exc:
                raise UsageError(f"--data: cannot read {source!r}: {exc.strerror}") from None
        try:
            loaded = json.loads(data)
        except ValueError as exc:
            raise UsageError(f"--data is not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise UsageError(f"--data must be a JSON object, got {type(loaded).__name__}")
        named = loaded.pop("SIGNATURE", signature)
        if named != signature:
            raise UsageError(f"--data names SIGNATURE {named!r}, but this runs {signature!r}: run {named!r}, or "
                             "take SIGNATURE out of the data")
        inputs.update(loaded)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"expected KEY=VALUE, got {pair!r}")
        inputs[key] = parse_value(value)
    if "SIGNATURE" in inputs:
        raise UsageError(f"SIGNATURE={inputs['SIGNATURE']!r}: the signature is run's first argument, not a KEY=VALUE")
    return inputs


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value
