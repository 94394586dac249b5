"""Find the endpoint file and worker class for an endpoint name.

Endpoint ``dummy_model_demo1`` (or its ``SERVER_CLASS``) -> file ``endpoints/dummy_model_demo1.py``
-> class ``DummyModelDemo1Worker``. File stems and class names are matched ignoring case and
underscores, as the original did.

The gateway checks files and classes statically (``ast``), without importing user code (and its
heavy libraries) into the gateway process: a missing file stops startup, a file that does not
parse or lacks its class makes its endpoint FAILED with the reason. Model servers import.
"""

from __future__ import annotations

import ast
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path


class DiscoveryError(Exception):
    """The endpoint file or its worker class cannot be found or loaded."""


def normalise(name: str) -> str:
    """Lower-case, without ``_`` and ``-`` (``my-model`` and ``My_Model`` both give ``mymodel``)."""
    return name.replace("_", "").replace("-", "").lower()


@dataclass(frozen=True)
class WorkerLocation:
    module_file: Path
    module_name: str  # dotted, importable from the app root: "endpoints.dummy_model_demo1"
    class_name: str


def find_endpoint_file(endpoints_dir: Path, class_key: str) -> Path:
    """Return the file in ``endpoints_dir`` whose stem matches ``class_key``."""
    wanted = normalise(class_key)
    if not endpoints_dir.is_dir():
        raise DiscoveryError(f"endpoints folder {str(endpoints_dir)!r} does not exist")
    for path in sorted(endpoints_dir.glob("*.py")):
        if path.stem == "__init__":
            continue
        if normalise(path.stem) == wanted:
            return path
    raise DiscoveryError(
        f"no endpoint file for {class_key!r}: expected {endpoints_dir / (class_key + '.py')}"
    )


def locate_worker(
    app_root: Path, workers_location: str, class_key: str, suffix: str = "Worker"
) -> WorkerLocation:
    """Statically find the worker class of ``class_key``; raise DiscoveryError if absent."""
    path = find_endpoint_file(app_root.joinpath(*workers_location.split(".")), class_key)
    return WorkerLocation(path, f"{workers_location}.{path.stem}", worker_class_in(path, class_key, suffix))


def expected_location(
    app_root: Path, workers_location: str, class_key: str, suffix: str = "Worker"
) -> tuple[WorkerLocation, str]:
    """The endpoint file of ``class_key`` (DiscoveryError when there is none) and why its worker
    class cannot be used ("" when it can): a syntax error, or no class of the expected name. The
    location names the class found, else the one expected."""
    path = find_endpoint_file(app_root.joinpath(*workers_location.split(".")), class_key)
    module = f"{workers_location}.{path.stem}"
    try:
        return WorkerLocation(path, module, worker_class_in(path, class_key, suffix)), ""
    except DiscoveryError as exc:
        return WorkerLocation(path, module, f"{_camel(class_key)}{suffix}"), str(exc)


def worker_class_in(path: Path, class_key: str, suffix: str = "Worker") -> str:
    """The name of the worker class of ``class_key`` defined in ``path``, read without importing
    it; DiscoveryError for a syntax error or when there is no such class."""
    wanted = (normalise(class_key) + normalise(suffix)).upper()
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except SyntaxError as exc:
        raise DiscoveryError(f"{path}: syntax error at line {exc.lineno}: {exc.msg}") from None
    except OSError as exc:
        raise DiscoveryError(f"{path}: cannot be read ({exc.strerror})") from None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and normalise(node.name).upper() == wanted:
            return node.name
    raise DiscoveryError(
        f"{path}: no worker class for {class_key!r} "
        f"(expected a class named like {_camel(class_key)}{suffix})"
    )


def import_worker(app_root: Path, location: WorkerLocation) -> tuple[type, dict]:
    """Import the worker class and the module's ``_CONFIG`` (empty when absent)."""
    root = str(app_root)
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        module = importlib.import_module(location.module_name)
    except Exception as exc:  # user code: anything can fail at import
        raise DiscoveryError(
            f"importing {location.module_file} failed: {type(exc).__name__}: {exc}"
        ) from exc
    cls = getattr(module, location.class_name, None)
    if not isinstance(cls, type):
        raise DiscoveryError(f"{location.module_file}: {location.class_name} is not a class")
    default_config = getattr(module, "_CONFIG", None) or {}
    if not isinstance(default_config, dict):
        raise DiscoveryError(f"{location.module_file}: _CONFIG must be a dict")
    return cls, default_config


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.replace("-", "_").split("_"))
