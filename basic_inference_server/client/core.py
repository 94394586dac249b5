"""``Client``: call a gateway from Python over pooled keep-alive connections."""

from __future__ import annotations

import json
import logging
import time
import urllib.parse
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from ..states import ChildState
from .errors import (
    REQUEST_ID_HEADER,
    ClientError,
    ConnectionFailed,
    ServerError,
    Timeout,
    Unavailable,
    error_from_response,
    reason_of,
)
from .jobs import Batch, Job
from .streaming import NDJSON_TYPE, Stream

logger = logging.getLogger(__name__)

SHUTDOWN_COMMAND = "SAFE_KILL_SERVER_CMD"
TimeoutSpec = float | tuple[float, float]
T = TypeVar("T")


class Client:
    """A client of one gateway: ``/run``, the status routes and ``/shutdown``.

    Connections are pooled and kept alive between calls; one ``Client`` may be shared by threads.
    Every call has a connect and a read timeout. Errors raise a
    :class:`~basic_inference_server.client.errors.ClientError` subclass (``BadInput``,
    ``UnknownSignature``, ``Unavailable``, ``Timeout``, ...).

    Retries: ``POST /run`` is not idempotent (a model may have run, or still be running, when an
    answer is lost), so a request is sent again only when it certainly did not run:

    - the connection could not be made (refused, name not resolved, connect timeout): the request
      was never sent. Retried up to ``retries`` times after ``backoff``, ``2 * backoff``,
      ``4 * backoff``, ... seconds, then :class:`ConnectionFailed`.
    - the gateway answered 503 with a ``Retry-After`` header (endpoint starting, queue full): it
      refused the request before any model saw it. Retried up to ``retries`` times after the
      seconds the gateway asked for; when it asks for more than ``max_retry_wait`` (an endpoint
      that failed to load asks for 30), :class:`Unavailable` is raised at once instead.

    Never retried: a read timeout (:class:`Timeout`), a connection lost after the request was
    sent, any other 5xx (:class:`ServerError`), and 503 without ``Retry-After``.

    Streaming: :meth:`stream` yields the items of an endpoint whose model is a generator as they
    arrive; the same timeouts and retries apply until the first item.

    Example::

        from basic_inference_server.client import Client, UnknownSignature

        with Client("http://127.0.0.1:5002", token="...") as client:
            answer = client.run("dummy_model_demo2", INPUT_VALUE=3)
            print(answer["predict_result"])

    Args:
        url: The gateway's base URL, e.g. ``"http://127.0.0.1:5002"`` (``http://`` is assumed).
        token: The admin token, sent as ``Authorization: Bearer`` on admin routes only.
        api_key: An API key (when the gateway has ``BIS_API_KEYS_FILE``), sent as ``X-API-Key``
            with every request.
        timeout: Seconds to connect and to wait for the answer; a ``(connect, read)`` pair sets
            them apart. A model that may take long needs a read timeout above its
            ``REQUEST_TIMEOUT``.
        retries: How many times a request may be sent again (see above); 0 disables retries.
        backoff: First wait, in seconds, before retrying a failed connection; doubles each time.
        max_retry_wait: The longest ``Retry-After`` worth waiting for.
        pool_size: Connections kept open to the gateway (for calls from several threads).
    """

    def __init__(self, url: str, token: str | None = None, timeout: TimeoutSpec = 30.0, retries: int = 3,
                 backoff: float = 0.2, *, max_retry_wait: float = 5.0, pool_size: int = 10,
                 api_key: str | None = None):
        if "://" not in url:
            url = "http://" + url
        if retries < 0 or backoff < 0:
            raise ValueError("retries and backoff must be >= 0")
        self.url = url.rstrip("/")
        self.token = token
        self.api_key = api_key
        self.retries = retries
        self.backoff = backoff
        self.max_retry_wait = max_retry_wait
        connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        self.timeout = urllib3.Timeout(connect=connect, read=read)
        self._pool = urllib3.PoolManager(num_pools=2, maxsize=pool_size, retries=False)
        self._sleep: Callable[[float], None] = time.sleep

    # -- routes -----------------------------------------------------------------------------
    def run(self, signature: str, /, **inputs: Any) -> dict[str, Any]:
        """Run the endpoint ``signature`` on ``inputs`` (``POST /run``).

        Args:
            signature: The endpoint's name, e.g. ``"dummy_model_demo2"``.
            **inputs: The endpoint's inputs, e.g. ``INPUT_VALUE=3``; any JSON-serialisable value
                (numpy arrays and scalars too). Use ``**{"KEY-WITH-DASH": 1}`` for other names.

        Returns:
            The decoded answer: ``predict_result`` plus the envelope (``call_id``, ``time``, ...).

        Raises:
            BadInput: The model's ``_pre_process`` (or the gateway) rejected the inputs.
            UnknownSignature: No started endpoint is called ``signature``.
            Unavailable: The endpoint is starting, restarting, failed or overloaded.
            Timeout: No answer within the endpoint's ``REQUEST_TIMEOUT`` or the read timeout.
            ServerError: The model raised, or its server died while serving the request.
            ConnectionFailed: The gateway could not be reached.
            ValueError: ``inputs`` has a ``SIGNATURE`` key, or a value that is not JSON (NaN too).
        """
        if "SIGNATURE" in inputs:
            raise ValueError("pass the signature as the first argument, not as a SIGNATURE input")
        return self.request("POST", "/run", {"SIGNATURE": signature, **inputs})

    def submit(self, signature: str, /, *, priority: int | None = None, webhook: str | None = None,
               idempotency_key: str | None = None, **inputs: Any) -> Job:
        """Submit a durable job (``POST /jobs``): returned once the gateway has it on disk.

        Args:
            signature: The endpoint's name.
            priority: 0 to 9, higher first (the gateway's default is 5).
            webhook: A URL the gateway POSTs the job to when it ends (signed, see the jobs guide).
            idempotency_key: Submitting again with the same key returns the same job, never a
                second run: with one, a submission is safe to retry.
            **inputs: The endpoint's inputs, as for :meth:`run`.

        Returns:
            A :class:`~.jobs.Job`: ``.result(timeout)``, ``.status()``, ``.wait()``, ``.cancel()``.
        """
        if "SIGNATURE" in inputs:
            raise ValueError("pass the signature as the first argument, not as a SIGNATURE input")
        body = {"SIGNATURE": signature, **inputs}
        if priority is not None:
            body["PRIORITY"] = priority
        if webhook is not None:
            body["WEBHOOK"] = webhook
        extra = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else None
        return Job(self, self.request("POST", "/jobs", body, headers=extra, retry=idempotency_key is not None))

    def batch(self, rows: Iterable[dict[str, Any]]) -> Batch:
        """Submit many jobs at once (``POST /batches``, NDJSON): each row is a ``/run`` body with
        its ``SIGNATURE`` and, to match the results to it, a ``custom_id``. Returns a
        :class:`~.jobs.Batch`: ``.status()``, ``.wait()``, ``.results()``."""
        data = b"".join(_encode(row) + b"\n" for row in rows)
        return Batch(self, json.loads(self.raw("POST", "/batches", data, "application/x-ndjson")))

    def raw(self, method: str, path: str, data: bytes | None = None, content_type: str | None = None,
            retry: bool = False) -> bytes:
        """Call a route whose body or answer is not one JSON object (NDJSON); the answer's bytes."""
        headers = {"Content-Type": content_type} if content_type else {}
        url = self.url + path
        return self._retrying(method, path, retry, lambda: self._open(method, url, data, headers).data)

    def batch_of(self, batch_id: str) -> Batch:
        """The batch ``batch_id`` (read from the gateway)."""
        return Batch(self, self.request("GET", f"/batches/{batch_id}"))

    def job(self, job_id: str) -> Job:
        """The job ``job_id`` (read from the gateway)."""
        return Job(self, self.request("GET", f"/jobs/{job_id}"))

    def jobs(self, status: str | None = None, signature: str | None = None, limit: int = 100,
             cursor: str | None = None) -> dict[str, Any]:
        """A page of jobs, newest first: ``{"JOBS": [...], "NEXT_CURSOR": ...}`` (``GET /jobs``)."""
        query = {k: v for k, v in (("status", status), ("signature", signature), ("limit", limit),
                                   ("cursor", cursor)) if v is not None}
        return self.request("GET", "/jobs?" + urllib.parse.urlencode(query))

    def stream(self, signature: str, /, **inputs: Any) -> Stream:
        """Run the streaming endpoint ``signature`` on ``inputs`` and read its items as they come.

        Sends ``POST /run`` with ``Accept: application/x-ndjson`` and returns once the first item
        has arrived (the gateway answers when the model yields it). Errors before the first item
        raise here, as :meth:`run` raises them, with the same retry policy; the read timeout
        then applies to the wait for each next item.

        Example::

            with client.stream("chat", PROMPT="hello") as items:
                for item in items:
                    print(item)
            print(items.envelope)  # call_id, signature, worker_id, items, time, ...

        Leaving the ``with`` block (or ``break`` from a loop over ``client.stream(...)``) before the
        end closes the connection, and the gateway cancels the request.

        Args:
            signature: The endpoint's name.
            **inputs: The endpoint's inputs, as for :meth:`run`.

        Returns:
            A :class:`~basic_inference_server.client.streaming.Stream`: an iterator of the decoded
            items and a context manager; its ``envelope`` is set once the stream has ended.

        Raises:
            ClientError: Before the first item, the subclasses :meth:`run` raises. While iterating,
                the subclass for the error that ended the stream (``ServerError`` for a model that
                raised, ``Timeout``, ...), with ``status`` ``None`` and the ``request_id``;
                ``Timeout`` too when no item came within the read timeout, and ``ServerError``
                when the connection was lost.
            ValueError: As for :meth:`run`.
        """
        if "SIGNATURE" in inputs:
            raise ValueError("pass the signature as the first argument, not as a SIGNATURE input")
        body = _encode({"SIGNATURE": signature, **inputs})
        headers = {"Accept": NDJSON_TYPE, "Content-Type": "application/json"}
        url = self.url + "/run"
        response = self._retrying("POST", "/run", True,
                                  lambda: self._open("POST", url, body, headers, preload=False))
        return Stream(response, url, self.timeout.read_timeout)

    def list_servers(self) -> dict[str, Any]:
        """The gateway's children (``GET /list_servers``).

        Returns:
            ``{"AVAIL_SERVERS": {name: {...}}, "SUPPORT_PROCESSES": {name: {...}}, ...envelope}``;
            each server has ``STATE``, ``PID``, ``PORT``, ``WORKERS``, ``RESTARTS``, ``UPTIME``, ...
        """
        return self.request("GET", "/list_servers")

    def system_status(self) -> dict[str, Any]:
        """Memory, disk, alerts and history of the gateway's machine (``GET /system_status``).

        Returns:
            ``{"SYSTEM_STATUS": {...}, "SYSTEM_ALERTS": {...}, "SYSTEM_HISTORY": {...}, ...envelope}``.
        """
        return self.request("GET", "/system_status")

    def notifications(self, signature: str | None = None) -> dict[str, Any]:
        """Take the notifications of one endpoint, or of every READY one (``POST /notifications``).

        The gateway returns a server's notifications once and then forgets them.

        Args:
            signature: The endpoint's name; ``None`` asks every READY endpoint of ``list_servers``.

        Returns:
            For one endpoint: ``{"GENERAL": [...], "INIT": [...], "<call_id>": [...], ...envelope}``
            (keys present only when they have notifications). For ``None``: that answer for each
            endpoint, keyed by its name.
        """
        if signature is not None:
            return self.request("POST", "/notifications", {"SIGNATURE": signature})
        servers = self.list_servers().get("AVAIL_SERVERS", {})
        # Replicas are listed as "name#2"; the gateway merges the READY replicas of "name".
        names = dict.fromkeys(name.split("#")[0] for name, info in servers.items()
                              if info.get("STATE") == ChildState.READY)
        return {name: self.request("POST", "/notifications", {"SIGNATURE": name}) for name in names}

    def shutdown(self) -> dict[str, Any]:
        """Stop the gateway and all its servers (``POST /shutdown``, needs the admin token).

        The gateway answers first, then lets requests in flight finish and exits.

        Returns:
            ``{"MESSAGE": "OK. Shutting down: ...", ...envelope}``.

        Raises:
            Unauthorized: The client has no token, or a wrong one.
        """
        return self.request("POST", "/shutdown", {"SIGNATURE": SHUTDOWN_COMMAND}, admin=True)

    def reload(self, signature: str | None = None) -> dict[str, Any]:
        """Put a changed configuration or endpoint file in force without a restart (needs the
        admin token): with ``signature`` (or ``"*"``), ``POST /reload_server``: that endpoint's servers
        are replaced by a new generation running its file as it is now, once it is ready; without,
        ``POST /reload_config``: the configuration is read again, new endpoints start, removed ones
        stop, changed ones are reloaded.

        Raises:
            Unauthorized: The client has no token, or a wrong one.
            BadInput: The configuration or the endpoint file does not read (nothing changed).
        """
        if signature is None:
            return self.request("POST", "/reload_config", {}, admin=True, retry=False)
        return self.request("POST", "/reload_server", {"SIGNATURE": signature}, admin=True, retry=False)

    def health(self) -> bool:
        """Whether the gateway answers ``GET /health`` with 200 (tried once, never raises)."""
        return self._probe("/health")

    def ready(self) -> bool:
        """Whether every started server is READY (``GET /ready``; tried once, never raises)."""
        return self._probe("/ready")

    def _probe(self, path: str) -> bool:
        try:
            self.request("GET", path, retry=False)
        except ClientError:
            return False
        return True

    # -- transport --------------------------------------------------------------------------
    def request(self, method: str, path: str, payload: dict[str, Any] | None = None, *,
                admin: bool = False, retry: bool = True, headers: dict[str, str] | None = None) -> dict[str, Any]:
        """Call any route of the gateway, with this client's timeouts, retries and errors.

        Args:
            method: ``"GET"``, ``"POST"`` or ``"DELETE"``.
            path: The route, e.g. ``"/update_workers"``.
            payload: The JSON body (POST).
            admin: Send the admin token as ``Authorization: Bearer``.
            retry: Apply the retry policy of the class; ``False`` sends the request once.
            headers: More request headers.

        Returns:
            The decoded JSON answer.

        Raises:
            ClientError: A subclass for the status or the transport failure.
            ValueError: ``payload`` cannot be encoded as JSON.
        """
        body = None if payload is None else _encode(payload)
        sent = {"Accept": "application/json", **(headers or {})}
        if body is not None:
            sent["Content-Type"] = "application/json"
        if admin and self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        url = self.url + path
        return self._retrying(method, path, retry, lambda: self._send(method, url, body, sent))

    def _retrying(self, method: str, path: str, retry: bool, attempt: Callable[[], T]) -> T:
        """``attempt()`` under the retry policy of the class (see its docstring)."""
        max_retries = self.retries if retry else 0
        tries = 0
        while True:
            try:
                return attempt()
            except ConnectionFailed as exc:
                if tries >= max_retries:
                    if not tries:
                        raise
                    raise ConnectionFailed(f"{exc.message} ({tries + 1} attempts)") from exc.__cause__
                wait = self.backoff * 2**tries
            except Unavailable as exc:
                if tries >= max_retries or exc.retry_after is None or exc.retry_after > self.max_retry_wait:
                    raise
                wait = exc.retry_after
            tries += 1
            logger.debug("%s %s: retry %d of %d in %.2fs", method, path, tries, max_retries, wait)
            self._sleep(wait)

    def _send(self, method: str, url: str, body: bytes | None, headers: dict[str, str]) -> dict[str, Any]:
        """One attempt: the decoded answer, or the matching ClientError."""
        response = self._open(method, url, body, headers)
        try:
            answer = json.loads(response.data)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise ServerError(f"{url} answered {response.status} without a JSON object", status=response.status,
                              request_id=response.headers.get(REQUEST_ID_HEADER),
                              body=response.data.decode("utf-8", errors="replace"))
        return answer

    def _open(self, method: str, url: str, body: bytes | None, headers: dict[str, str], *,
              preload: bool = True) -> urllib3.BaseHTTPResponse:
        """One attempt: the 2xx answer (its body unread unless ``preload``), or the matching ClientError."""
        if self.api_key:
            headers = {**headers, "X-API-Key": self.api_key}
        try:
            response = self._pool.request(method, url, body=body, headers=headers, timeout=self.timeout,
                                          retries=False, redirect=False, preload_content=preload)
            if not 200 <= response.status < 300:
                # An error answer is read whole (its connection goes back to the pool).
                raise error_from_response(response.status, response.headers, response.data)
        except NewConnectionError as exc:  # refused, unreachable, or the name does not resolve
            raise ConnectionFailed(f"cannot connect to {self.url}: {reason_of(exc)}") from exc
        except ConnectTimeoutError as exc:
            raise ConnectionFailed(f"cannot connect to {self.url}: timed out after "
                                   f"{self.timeout.connect_timeout}s") from exc
        except ReadTimeoutError as exc:
            raise Timeout(f"no answer from {url} within {self.timeout.read_timeout}s (the request may "
                          "still be running on the server)") from exc
        except ProtocolError as exc:
            raise ServerError(f"connection to {self.url} lost before the answer: {reason_of(exc)}") from exc
        except HTTPError as exc:
            raise ClientError(f"{method} {url} failed: {exc}") from exc
        return response

    # -- lifetime ---------------------------------------------------------------------------
    def close(self) -> None:
        """Close the pooled connections (the client can still be used; it reconnects)."""
        self._pool.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r}, token={'***' if self.token else None}, api_key={'***' if self.api_key else None})"


def _encode(payload: dict[str, Any]) -> bytes:
    # allow_nan=False: the gateway refuses NaN and Infinity (they are not JSON); say so before sending.
    try:
        text = json.dumps(payload, allow_nan=False, default=_numpy_default, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the request body cannot be sent as JSON: {exc}") from None
    return text.encode("utf-8")


def _numpy_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars, without importing numpy
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")

