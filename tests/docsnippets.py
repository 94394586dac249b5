"""The code blocks of the README and the documentation site, and what the snippet test does with each.

A block's role comes from its language and from an HTML comment on the line before its fence
(invisible in the rendered page):

- ``<!-- not run: <why> -->``: a block the test does not run (it needs Docker, a cluster, root...),
  with the reason, which may not be empty.
- ``<!-- run: config entry -->`` before a ``json`` block: its ``CONFIG_ENDPOINTS`` entries go into
  the test gateway's ``config_gateway.txt``.
- ``<!-- run: last -->``: a command run after every other block (stopping the gateway).

Without a comment, a ``python`` block whose first line is ``# endpoints/<name>.py`` is written to
that file, any other ``python`` block is run with the interpreter, and a ``bash`` block is run with
bash, all from the test gateway's folder against that gateway. Other languages (``json``,
``text``, ...) are shown output or data, never run; a fence without a language is refused.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
RUNNABLE_LANGUAGES = ("python", "bash", "sh", "shell", "console")
_FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
_DIRECTIVE = re.compile(r"<!--\s*(.*?)\s*-->\s*$")
_ENDPOINT_FILE = re.compile(r"#\s*(endpoints/[A-Za-z0-9_]+\.py)\s*$")


class Role(Enum):
    NOT_RUN = "not run"
    ENDPOINT_FILE = "endpoint file"
    CONFIG_ENTRY = "config entry"
    PYTHON = "python"
    SHELL = "shell"
    LAST = "last"
    SHOWN = "shown"  # output or data: json, text, yaml...


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository
    line: int  # of the opening fence
    language: str
    text: str
    directive: str  # the HTML comment before the fence, "" when none

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def role(self) -> Role:
        """What the snippet test does with it (ValueError for a block it cannot place)."""
        directive = self.directive
        if directive.startswith("not run:"):
            if not directive[len("not run:"):].strip():
                raise ValueError(f"{self.where}: 'not run:' without a reason")
            return Role.NOT_RUN
        if directive == "run: config entry":
            if self.language != "json":
                raise ValueError(f"{self.where}: a config entry must be a json block")
            return Role.CONFIG_ENTRY
        if directive == "run: last":
            return Role.LAST
        if directive:
            raise ValueError(f"{self.where}: unknown directive {directive!r} (expected 'not run: <why>', "
                             "'run: config entry' or 'run: last')")
        if not self.language:
            raise ValueError(f"{self.where}: a fence without a language (use text for output)")
        if self.language == "python":
            return Role.ENDPOINT_FILE if self.endpoint_file else Role.PYTHON
        if self.language in RUNNABLE_LANGUAGES:
            return Role.SHELL
        return Role.SHOWN

    @property
    def endpoint_file(self) -> str | None:
        """``endpoints/<name>.py`` when the block's first line names it."""
        match = _ENDPOINT_FILE.match(self.text.split("\n", 1)[0])
        return match.group(1) if match else None

    def config_entries(self) -> dict[str, Any]:
        """A config entry block's endpoints: ``"CONFIG_ENDPOINTS": {...}`` or ``"name": {...}``."""
        data = json.loads("{" + self.text + "}")
        return data.get("CONFIG_ENDPOINTS", data)


def pages() -> list[Path]:
    """The README, then the site's pages in the order of its navigation."""
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))
    found: list[Path] = [REPO / "README.md"]

    def walk(items: Any) -> None:
        for item in items:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            if isinstance(value, list):
                walk(value)
            else:
                found.append(REPO / config.get("docs_dir", "docs") / value)
    walk(config["nav"])
    return found


def blocks(page: Path, root: Path = REPO) -> list[Block]:
    """The fenced blocks of ``page`` (named relative to ``root``)."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in _FENCE.finditer(text):
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        directive = _DIRECTIVE.search(before)
        found.append(Block(str(page.relative_to(root)), text.count("\n", 0, match.start()) + 1,
                           match.group(1), match.group(2), directive.group(1) if directive else ""))
    return found


def all_blocks() -> list[Block]:
    return [block for page in pages() for block in blocks(page)]
