"""What both models of the openai_text example share: the text they learn from and their model file.

The text is the help of the Python language that CPython ships as ``pydoc_data.topics`` (what
``help("for")`` prints): some 80 topics, about 450 KB of English about statements, types and
operators, so nothing is downloaded. Its prose paragraphs are kept; grammar rules, interactive
examples, code and headings are dropped. The text differs a little from one Python version to the
next, and so do the models made from it.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

_RULE = re.compile(r"^[*=\-~^]{3,}$")  # the underline of a heading
# A prose paragraph starts like a sentence, a list item or a footnote; code starts otherwise.
_PROSE_START = re.compile(r'^(?:[*+-] |\d+\. |\[\d+\] )?(?:[A-Z]|\*\*|"\S+" )')
_MIN_LETTERS = 0.7  # share of the non-space characters; code and tables have fewer


def paragraphs() -> list[str]:
    """The prose paragraphs of the Python help topics, each on one line, in a stable order."""
    from pydoc_data.topics import topics

    found = []
    for name in sorted(topics):
        for block in re.split(r"\n\s*\n", topics[name]):
            lines = [line.strip() for line in block.splitlines() if line.strip()]
            if not lines or any(_RULE.match(line) for line in lines):
                continue
            text = " ".join(" ".join(lines).split())
            chars = text.replace(" ", "")
            letters = sum(char.isalpha() for char in chars) / len(chars)
            if (">>>" in text or "::=" in text or len(text.split()) < 5 or letters < _MIN_LETTERS
                    or not _PROSE_START.match(text)):
                continue
            found.append(text)
    return found


def write_atomically(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through ``write(file)`` so that a reader (a replica starting at the same
    time) sees the whole file or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
        try:
            write(tmp)
        except BaseException:
            tmp.close()
            os.unlink(tmp.name)
            raise
    os.replace(tmp.name, path)


def load_or_train(config: dict[str, Any], train: Callable[[Path], None], load: Callable[[Path], Any]) -> Any:
    """The model in ``config["MODEL_FILE"]``, made first by ``train(path)`` when the file is missing
    and ``TRAIN_IF_MISSING`` is on. A file that ``load(path)`` cannot read is a ValueError naming it."""
    path = Path(config["MODEL_FILE"])
    if not path.exists():
        if not config["TRAIN_IF_MISSING"]:
            raise FileNotFoundError(f"model file {path} does not exist (TRAIN_IF_MISSING is off)")
        train(path)
    try:
        return load(path)
    except Exception as exc:  # noqa: BLE001 - whatever the library raises, the file is bad
        raise ValueError(f"model file {path} cannot be loaded: {type(exc).__name__}: {exc}") from None
