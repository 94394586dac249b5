"""Every runnable block of the README and the docs, run in page order against one gateway.

The gateway serves the shipped demo (``endpoints/`` and ``config_gateway.txt`` as in the
repository) from a folder of its own, on free ports, without ``BIS_ADMIN_TOKEN``: it generates the
admin token and keeps it in ``_cache/_data/admin_token``, as ``make run`` does. Each block runs in
that folder, with ``localhost:5002`` pointing at this gateway and ``bis`` on the PATH; endpoint
files and config entries the pages show are written there, and picked up by the pages' own
``bis reload`` when they have one, else by a reload before the next command. A block passes when
it exits 0 (curl is run with ``--fail-with-body``, so an HTTP error fails it). What each block is
for, and the markers that keep one from running: tests/docsnippets.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import docsnippets
from conftest import REPO, Gateway
from docsnippets import Block, Role

BLOCK_TIMEOUT = 90


class DocsRun:
    """The gateway the docs talk to, and the changes the pages made to its folder."""

    def __init__(self, app: Path, gateway: Gateway, bin_dir: Path):
        self.app, self.gateway = app, gateway
        self.env = {k: v for k, v in os.environ.items() if k not in ("BIS_ADMIN_TOKEN", "BIS_URL")}
        self.env.update(PYTHONPATH=str(REPO), BIS_URL=gateway.url, PATH=f"{bin_dir}{os.pathsep}{self.env['PATH']}")
        self.pending = False  # endpoint files or entries written since the gateway last read them

    def token(self) -> str:
        return (self.app / "_cache" / "_data" / "admin_token").read_text().strip()

    def write_endpoint(self, block: Block) -> None:
        path = self.app / block.endpoint_file
        if not path.exists() or path.read_text() != block.text:
            path.write_text(block.text)
            self.pending = True

    def add_entries(self, block: Block) -> None:
        path = self.app / "config_gateway.txt"
        config = json.loads(path.read_text())
        entries = block.config_entries()
        if any(config["CONFIG_ENDPOINTS"].get(name) != entry for name, entry in entries.items()):
            config["CONFIG_ENDPOINTS"].update(entries)
            path.write_text(json.dumps(config, indent=4))
            self.pending = True

    def reload(self) -> None:
        answer = self.gateway.post("/reload_config", {}, headers={"Authorization": f"Bearer {self.token()}"})
        assert answer.status_code == 200 and not answer.json()["FAILED"], answer.text
        self.pending = False
        self.gateway.wait_for("/ready", 200, timeout=60)

    def command(self, block: Block) -> list[str]:
        text = re.sub(r"\b(?:localhost|127\.0\.0\.1):5002\b", f"127.0.0.1:{self.gateway.port}", block.text)
        text = text.replace(".venv/bin/bis", "bis").replace(".venv/bin/python", sys.executable)
        if block.role is Role.PYTHON:
            return [sys.executable, "-c", text]
        text = re.sub(r"(^|[\s;|&(])curl ", r"\1curl --fail-with-body --max-time 60 ", text)
        return ["bash", "-e", "-o", "pipefail", "-c", text]

    def run(self, block: Block) -> str | None:
        """Run one block; why it failed, or None."""
        reloads = "reload" in block.text
        if self.pending and not reloads:
            self.reload()
        try:
            done = subprocess.run(self.command(block), cwd=self.app, env=self.env, capture_output=True, text=True,
                                  timeout=BLOCK_TIMEOUT)
        except subprocess.TimeoutExpired:
            return f"no end within {BLOCK_TIMEOUT}s"
        if reloads:
            self.pending = False
        if done.returncode != 0:
            return f"exit code {done.returncode}\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
        if block.role is not Role.LAST:
            self.gateway.wait_for("/ready", 200, timeout=60)  # what the block started or reloaded is up
        return None


def make_app(tmp_path: Path) -> Path:
    """The repository's demo in a folder of its own (its cache, its admin token)."""
    app = tmp_path / "app"
    shutil.copytree(REPO / "endpoints", app / "endpoints", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "config_gateway.txt", app / "config_gateway.txt")
    return app


def bis_command(folder: Path) -> Path:
    folder.mkdir()
    script = folder / "bis"
    script.write_text(f"#!/bin/sh\nexec {sys.executable} -m basic_inference_server.client \"$@\"\n")
    script.chmod(0o755)
    return folder


def test_every_runnable_block_of_the_docs_runs(tmp_path):
    blocks = docsnippets.all_blocks()
    app = make_app(tmp_path)
    gateway = Gateway(app, token=None).start()
    docs = DocsRun(app, gateway, bis_command(tmp_path / "bin"))
    failures, ran = [], 0
    try:
        for block in [b for b in blocks if b.role is not Role.LAST] + [b for b in blocks if b.role is Role.LAST]:
            role = block.role
            if role is Role.ENDPOINT_FILE:
                docs.write_endpoint(block)
            elif role is Role.CONFIG_ENTRY:
                docs.add_entries(block)
            elif role in (Role.PYTHON, Role.SHELL, Role.LAST):
                why = docs.run(block)
                ran += 1
                if why is not None:
                    failures.append(f"{block.where} ({block.language}):\n{block.text}\n{why}")
        assert gateway.proc.wait(30) == 0, "the last block (bis shutdown) did not stop the gateway cleanly"
    finally:
        gateway.stop()
    assert not failures, "\n\n".join(failures) + f"\n--- gateway log (end)\n{gateway.output()[-4000:]}"
    assert ran == sum(b.role in (Role.PYTHON, Role.SHELL, Role.LAST) for b in blocks) >= 15
    gateway.assert_nothing_left()
