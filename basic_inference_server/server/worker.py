"""``FlaskWorker``: the one class endpoint authors meet."""

from __future__ import annotations

import copy
import logging
import socket
from typing import Any

from .current import SERVING
from .notifications import INIT, NotificationStore

logger = logging.getLogger(__name__)

# Control keys of the original clients; they are not model inputs.
CONTROL_KEYS = frozenset({"SIGNATURE", "BASE64_KEYS", "BASE64_OUTPUTS", "ENCODING", "TOKEN", "STREAM"})


class _PlainLog:
    """Stand-in for the server's Logger when a worker is built on its own (tests, notebooks)."""

    def __init__(self, name: str):
        self._logger = logging.getLogger(f"bis.{name}")
        self.config_data: dict[str, Any] = {}

    def P(self, s: Any, color: str | None = None, **kwargs: Any) -> None:  # noqa: N802
        self._logger.info(str(s))


class FlaskWorker:
    """Base class of a model endpoint: subclass it in ``endpoints/<name>.py`` as ``<Name>Worker``.

    Lifecycle:
        The model server builds ``NR_WORKERS`` instances, each in its own thread. For each it
        calls ``__init__`` (keep it light: call ``super().__init__(prefix_log='[XXXX]', **kwargs)``)
        and then ``_load_model()`` once. The server reports ready only when every worker has
        loaded; if ``_load_model`` raises, the server reports the failure and exits.
        ``_load_shared(config)``, a class method you may define, runs once per server process
        before any ``_load_model``; what it returns is ``self.shared`` in every worker (from
        ``_load_model`` on): one copy of the weights however many workers. Every worker thread
        reads it at once: treat it as read-only, or use the model's own locking.
        ``WARMUP_INPUTS`` (a list of request bodies in the endpoint's config) go through the
        hooks of every worker after its ``_load_model``, before the server reports ready; a
        warmup that fails is a load failure.
        Per request: ``_pre_process(inputs)`` -> ``_predict(prep)`` -> ``_post_process(pred)``,
        whose result is answered as ``predict_result``. A stage returning ``None`` skips the
        later stages (``predict_result`` is then ``null``).

    Configuration:
        ``self.config_data`` is the module's ``_CONFIG`` with this endpoint's entry of
        ``config_gateway.txt`` merged over it (keys upper-cased). Every key ``K`` is readable
        as ``self.cfg_<k>`` (``WEIGHT`` -> ``self.cfg_weight``); a ``cfg_x`` you define wins.

    Devices:
        With ``DEVICES`` in the endpoint's entry (``"cpu"``, or a list such as ``["cuda:0",
        "cuda:1"]``), replica *i* runs on ``DEVICES[i % len(DEVICES)]``: its process sees only
        that GPU (``CUDA_VISIBLE_DEVICES``), ``self.device`` is the name to give the framework
        there (``"cuda:0"``, or ``"cpu"``) and ``self.physical_device`` the configured one
        (``"cuda:1"``). Without ``DEVICES`` both are None.

    Threads:
        Each instance serves one request at a time, but instances of one endpoint run in
        parallel threads of one process: share nothing mutable between them without a lock.
        Use ``self.P(...)`` / ``self.log.P(...)`` to log and ``self._create_notification(...)``
        for messages a client can read back from ``/notifications``; do not ``print``.

    Batching:
        With ``MAX_BATCH_SIZE`` > 1 in the endpoint's config, requests waiting in the queue are
        grouped (up to that size, waiting at most ``MAX_BATCH_WAIT_MS`` once a worker has the first)
        and one worker takes the group: ``_pre_process(inputs)`` per request, then
        ``_predict(list_of_prepared)`` once, which must return a list (or array) of as many
        predictions in the same order, then ``_post_process(pred)`` per request. An exception in
        ``_pre_process`` or ``_post_process`` fails that request only; an exception in
        ``_predict`` (or a wrong number of predictions) fails every request of the batch.
        Without the key (or with 1) ``_predict`` gets one prepared input, as always.

    Streaming:
        ``_predict`` may return a generator (or any iterator) instead of a value: each item it
        yields goes through ``_post_process(item)`` and is sent to the client as soon as it is
        ready (``Accept: text/event-stream`` or ``application/x-ndjson``, or ``"STREAM": true``
        in the body); a client that asks for no stream gets the list of items as
        ``predict_result``. A yielded ``None`` is skipped. The generator waits at its ``yield``
        while the client is slow (at most a few items are in flight), and is closed when the
        client leaves (``GeneratorExit`` at the ``yield``: release resources in ``finally``).
        With batching, ``_predict(list)`` may yield, at each step, a list with one item per
        request (``None``: nothing this step; ``END_OF_STREAM``: that request's stream ends);
        ``self.cancelled_slots`` holds the positions whose client has left. An exception after
        the first item ends the stream with an error event.

    Open Inference Protocol (KServe V2):
        ``POST /v2/models/<endpoint>/infer`` runs the same hooks. ``_pre_process`` receives
        ``{<input name>: numpy.ndarray, ..., "PARAMETERS": {<the request's parameters>}}``: each
        input an array of its datatype and shape (BYTES: an object array of ``bytes``; tensors
        sent in binary are read-only views of the request, copy one before changing it in place).
        ``_post_process`` returns a dict of output name to array, list or scalar (the datatypes
        come from numpy; str and bytes are BYTES; a value that is no tensor, such as a dict, is one
        BYTES element holding its JSON). ``MODEL_METADATA`` (a class attribute or ``_CONFIG`` key:
        ``{"platform": ..., "inputs": [{"name", "datatype", "shape"}], "outputs": [...]}``, -1 for
        any size) is answered as the model's metadata, checks the inputs before a worker sees
        them and casts the outputs to their declared datatypes. With batching, each V2 request is
        one item of the batch.

    Errors:
        An exception in ``_pre_process`` answers 400 with its message (bad input). An exception
        in ``_predict`` or ``_post_process`` answers 500 with its type and message; the
        traceback goes to the server log only. Raise :class:`basic_inference_server.InputError`
        from any hook to answer a 4xx status of your choice with your own message. Requests
        slower than ``REQUEST_TIMEOUT`` answer 504. The worker is freed in every case.

    Example:
        >>> class EchoWorker(FlaskWorker):
        ...     def _pre_process(self, inputs):
        ...         if "TEXT" not in inputs:
        ...             raise ValueError("TEXT should be defined in inputs")
        ...         return inputs["TEXT"]
        ...     def _predict(self, text):
        ...         return text.upper()
        ...     def _post_process(self, pred):
        ...         return {"echo": pred}

        A streamed answer, one word at a time:

        >>> class WordsWorker(FlaskWorker):
        ...     def _predict(self, inputs):
        ...         for word in inputs["TEXT"].split():
        ...             yield word
        ...     def _post_process(self, word):
        ...         return {"token": word}
    """

    def __init__(
        self,
        log: Any = None,
        default_config: dict[str, Any] | None = None,
        verbosity_level: int = 1,
        worker_id: int = 0,
        upstream_config: dict[str, Any] | None = None,
        prefix_log: str = "[FSKWKR]",
        DEBUG: bool = False,  # noqa: N803 - original keyword
        notifications: NotificationStore | None = None,
        **kwargs: Any,
    ):
        self.log = log if log is not None else _PlainLog(type(self).__name__)
        self.prefix_log = prefix_log
        self.DEBUG = DEBUG
        self._verbosity_level = verbosity_level
        self._worker_id = worker_id
        self.worker_id = worker_id
        self.hostname = socket.gethostname()
        SERVING.call_id = SERVING.inputs = None  # a worker is built on the thread that serves it: no call yet
        self._notifications = notifications if notifications is not None else NotificationStore()
        merged = copy.deepcopy(default_config) if default_config else {}
        for key, value in (upstream_config or {}).items():
            merged[str(key).upper()] = copy.deepcopy(value)
        self.config_data: dict[str, Any] = merged
        self.config_worker = merged  # name used by code written for the original
        self.shared: Any = None  # what _load_shared returned (set by the server before _load_model)
        self.device: str | None = None  # DEVICES: the device inside this process ("cuda:0", "cpu")
        self.physical_device: str | None = None  # DEVICES: the configured device ("cuda:1")

    # -- hooks: override these ---------------------------------------------------------------
    @classmethod
    def _load_shared(cls, config: dict[str, Any]) -> Any:
        """Load what the workers of one server process share (``config``: the endpoint's merged
        configuration, keys upper-cased); its result is ``self.shared``. Called once, before
        any worker's ``_load_model``."""
        return None

    def _load_model(self) -> None:
        """Load the model; called once per worker, before the server reports ready."""

    def _pre_process(self, inputs: dict[str, Any]) -> Any:
        """Validate and convert the request's inputs (the JSON body without ``SIGNATURE``)."""
        return inputs

    def _predict(self, prep_inputs: Any) -> Any:
        """Run the model on what ``_pre_process`` returned."""
        raise NotImplementedError(f"{type(self).__name__} must implement _predict")

    def _post_process(self, pred: Any) -> Any:
        """Turn the prediction into a JSON-serialisable answer (numpy values are fine)."""
        return pred

    # -- helpers for endpoint code -----------------------------------------------------------
    def P(self, s: Any, color: str | None = None, **kwargs: Any) -> None:  # noqa: N802 - original API
        self.log.P(f"{self.prefix_log} {s}", color=color)

    def D(self, s: Any, **kwargs: Any) -> None:  # noqa: N802 - original API
        if self.DEBUG:
            self.P(s)

    def _create_notification(
        self,
        notif: str = "log",
        msg: Any = "",
        info: Any = None,
        stream_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Leave a message for ``/notifications`` under the current call id (``INIT`` before any call)."""
        notif_type = kwargs.get("notif_type", notif)
        call_id = SERVING.call_id
        bucket = INIT if call_id is None else str(call_id)
        self._notifications.add(bucket, str(notif_type), type(self).__name__, msg, info)

    def get_last_query(self) -> dict[str, Any] | None:
        """The inputs of the call this worker serves (or served last)."""
        return SERVING.inputs

    @property
    def _counter(self) -> int | None:
        """The id of the call this worker serves (None before its first): the original's name."""
        return SERVING.call_id

    @property
    def cancelled_slots(self) -> set[int]:
        """In a streaming batch's ``_predict``: the positions of the batch whose client has left
        (stop computing for them)."""
        return SERVING.cancelled_slots

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: cfg_<key> reads the merged config per instance.
        if name.startswith("cfg_"):
            config = self.__dict__.get("config_data", {})
            key = name[4:].upper()
            if key in config:
                value = config[key]
                return dict(value) if isinstance(value, dict) else value
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
