"""Markers by where a test lives: ``unit`` (tests/unit), ``integration`` (tests/integration, real
processes), ``docker`` (tests/docker); ``soak`` for the load-and-fault soaks (test_soak.py), which
are integration tests too. ``make test`` runs them all; ``-m unit`` (or ``-m "not docker"``, ...)
picks a part."""

from __future__ import annotations

from pathlib import Path

import pytest

_FOLDERS = {"unit": pytest.mark.unit, "integration": pytest.mark.integration, "docker": pytest.mark.docker}
_SOAKS = {"test_soak.py"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.fspath))
        marker = _FOLDERS.get(path.parent.name)
        if marker is not None:
            item.add_marker(marker)
        if path.name in _SOAKS:
            item.add_marker(pytest.mark.soak)
