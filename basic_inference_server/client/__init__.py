"""A Python client and a command line (``bis``) for the gateway.

Example::

    from basic_inference_server.client import Client, UnknownSignature

    with Client("http://127.0.0.1:5002") as client:
        print(client.run("dummy_model_demo2", INPUT_VALUE=3)["predict_result"])
        with client.stream("chat", PROMPT="hello") as items:  # an endpoint whose _predict yields
            for item in items:
                print(item)

See :class:`Client` for the timeouts and the retry policy, and :mod:`.errors` for the exceptions.
"""

from __future__ import annotations

from .core import Client
from .errors import (
    BadInput,
    ClientError,
    ConnectionFailed,
    ServerError,
    Timeout,
    Unauthorized,
    Unavailable,
    UnknownSignature,
)
from .jobs import Batch, Job, JobCancelled
from .streaming import Stream

__all__ = [
    "BadInput",
    "Batch",
    "Client",
    "ClientError",
    "ConnectionFailed",
    "Job",
    "JobCancelled",
    "ServerError",
    "Stream",
    "Timeout",
    "Unauthorized",
    "Unavailable",
    "UnknownSignature",
]
