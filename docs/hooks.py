"""MkDocs hook: pages are written once; what code declares is generated from the code.

``{{ settings_reference }}`` becomes the configuration reference of :mod:`basic_inference_server.settings`,
so the docs and the parser cannot drift apart.
"""

from __future__ import annotations

from basic_inference_server.settings import reference


def on_page_markdown(markdown: str, page, config, files) -> str:
    return markdown.replace("{{ settings_reference }}", reference())
