"""basic_inference_server: one HTTP gateway in front of supervised model-server processes.

Endpoint authors subclass :class:`FlaskWorker`; operators run :class:`FlaskGateway`
(``run_gateway.py``). ``FlaskGateway`` is imported lazily so that a model server, which
imports this package for ``FlaskWorker``, does not pay for the gateway's modules.
"""

from __future__ import annotations

from typing import Any

from .errors import InputError
from .lib_ver import LIB_VER
from .logger import Logger
from .server.streams import END_OF_STREAM
from .server.worker import FlaskWorker

__all__ = ["END_OF_STREAM", "FlaskGateway", "FlaskWorker", "InputError", "LIB_VER", "Logger", "get_packages"]
__version__ = LIB_VER


def get_packages() -> list[str]:
    """Installed distributions as sorted ``name==version`` strings."""
    from importlib.metadata import distributions

    names = {f"{d.metadata['Name']}=={d.version}" for d in distributions() if d.metadata["Name"]}
    return sorted(names, key=str.lower)


def __getattr__(name: str) -> Any:
    if name == "FlaskGateway":
        from .gateway import FlaskGateway

        return FlaskGateway
    raise AttributeError(f"module 'basic_inference_server' has no attribute {name!r}")
