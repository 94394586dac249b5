"""Markers by where a test lives: ``unit`` (tests/unit), ``integration`` (tests/integration, real
processes), ``docker`` (tests/docker); ``soak`` for the load-and-fault soaks (test_soak.py), which
are integration tests too. ``make test`` runs them all; ``-m unit`` (or ``-m "not docker"``, ...)
picks a part.

``make test`` runs the tests on several processes (pytest-xdist, ``--dist loadgroup``): the tests
of one module stay on one process (their module fixtures, a gateway say, are made once), and the
Docker tests all on one (one engine, one image build at a time)."""

from __future__ import annotations

from pathlib import Path

import pytest

_FOLDERS = {"unit": pytest.mark.unit, "integration": pytest.mark.integration, "docker": pytest.mark.docker}
_SOAKS = {"test_soak.py"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's, which reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.fspath))
        marker = _FOLDERS.get(path.parent.name)
        if marker is not None:
            item.add_marker(marker)
        if path.name in _SOAKS:
            item.add_marker(pytest.mark.soak)
        group = "docker" if path.parent.name == "docker" else f"{path.parent.name}/{path.stem}"
        item.add_marker(pytest.mark.xdist_group(group))
