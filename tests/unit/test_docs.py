"""The docs' code blocks: each is run by the snippet test (tests/integration/test_docs_snippets.py)
or says why not, and every page is in the site's navigation."""

from __future__ import annotations

import docsnippets
import pytest
from docsnippets import REPO, Block, Role

BLOCKS = docsnippets.all_blocks()


def test_every_page_of_the_docs_is_in_the_navigation():
    listed = {path.resolve() for path in docsnippets.pages()}
    pages = {path.resolve() for path in (REPO / "docs").rglob("*.md")}
    assert pages - listed == set(), "pages missing from mkdocs.yml's nav"
    assert all(path.is_file() for path in listed)


def test_the_docs_have_blocks_of_every_role():
    roles = {block.role for block in BLOCKS}
    assert {Role.ENDPOINT_FILE, Role.CONFIG_ENTRY, Role.PYTHON, Role.SHELL, Role.LAST, Role.NOT_RUN} <= roles
    assert [block.role for block in BLOCKS].count(Role.LAST) == 1  # the gateway stops once


@pytest.mark.parametrize("block", BLOCKS, ids=lambda block: block.where)
def test_each_block_is_run_or_says_why_not(block: Block):
    role = block.role  # raises for a block without a language, or a directive without a reason
    if role is Role.ENDPOINT_FILE or role is Role.PYTHON:
        compile(block.text, block.where, "exec")
    if role is Role.CONFIG_ENTRY:
        entries = block.config_entries()
        assert entries and all(isinstance(entry, dict) for entry in entries.values())
    if role is Role.SHOWN:
        assert block.language not in docsnippets.RUNNABLE_LANGUAGES


def test_the_readmes_endpoint_is_the_walk_throughs():
    def word_score(page: str) -> str:
        (block,) = [b for b in docsnippets.blocks(REPO / page) if b.text.startswith("# endpoints/word_score.py")]
        return block.text
    assert word_score("README.md") == word_score("docs/guide/first-endpoint.md")


@pytest.mark.parametrize("text, message", [
    ("<!-- not run: -->\n```bash\nls\n```\n", "without a reason"),
    ("```\nls\n```\n", "without a language"),
    ("<!-- run: everything -->\n```bash\nls\n```\n", "unknown directive"),
    ("<!-- run: config entry -->\n```bash\nls\n```\n", "must be a json block"),
])
def test_a_block_that_cannot_be_placed_is_refused(tmp_path, text, message):
    page = tmp_path / "page.md"
    page.write_text(text, encoding="utf-8")
    (block,) = docsnippets.blocks(page, root=tmp_path)
    with pytest.raises(ValueError, match=message):
        _ = block.role
