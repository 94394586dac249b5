"""Who may submit, read and cancel jobs and batches once API keys are on (``BIS_API_KEYS_FILE``).

With keys on, every ``/jobs`` and ``/batches`` route needs a valid API key (401), or the admin
token where it only reads or cancels:

- a submission is an API key's (the admin token is no API key: 401), admitted as ``/run`` is
  (its ``RPS``: 429 with ``Retry-After``), and counted in the key's ``CONCURRENCY`` until it
  is answered 202, not while the job waits or runs (a job runs when the queue lets it: holding
  the key's place meanwhile would refuse the key's ``/run`` for as long as its jobs queue). A
  job's endpoint must be one the key may call (403; a batch's line for another fails alone);
- the job or batch is stored under the key's name (its owner: names are unique in the keys file
  and survive the key's replacement, hashes do not), and only that key, or the admin token
  (``Authorization: Bearer``), reads, waits on, follows, cancels or lists it. Another key gets
  404, as for an id that does not exist. Reading counts against no limit: a long poll or an
  event stream would hold a ``CONCURRENCY`` place for as long as it waits;
- a job submitted while keys were off has no owner: the admin token alone sees it once keys are on.

With keys off, nobody is asked anything and every job is everyone's, as before.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...apikeyfile import KeyEntry
from ...errors import Unauthorized
from ...transport.httpmsg import HttpRequest
from ...webutil import bearer_of, is_admin_token
from ..apikeys import ApiKeys


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request to ``/jobs`` or ``/batches``: ``name``, an API key's (what a job it
    submits is stored under), or None: keys are off, or it is the admin (who sees every job)."""

    name: str | None = None
    entry: KeyEntry | None = None  # a submission's key: in flight until answered (Access.done)
    keys: ApiKeys | None = None  # the keys in force (a submission's endpoint is checked against them)

    def sees(self, owner: str | None) -> bool:
        """Whether a job or batch stored under ``owner`` is this caller's to read or cancel."""
        return self.name is None or owner == self.name

    def may_call(self, signature: str) -> None:
        """403 unless the submitting key may call ``signature`` (its ``ENDPOINTS``)."""
        if self.entry is not None and self.keys is not None:
            self.keys.allow(self.entry, signature)

    def scoped(self, idempotency_key: str) -> str:
        """An ``Idempotency-Key`` as stored: each API key has keys of its own (the name's length
        first, so that no name and key can spell another's)."""
        return idempotency_key if self.name is None else f"{len(self.name)}:{self.name}:{idempotency_key}"


EVERYONE = Caller()


class Access:
    """The API keys and the admin token, as the job routes ask them."""

    def __init__(self, keys: ApiKeys | None = None, admin_token: str | None = None):
        self.keys = keys or ApiKeys()
        self._admin_token = admin_token

    def reader(self, request: HttpRequest) -> Caller:
        """Who reads, lists or cancels: the admin, or a valid key's name (401 for neither)."""
        if not self.keys.on:
            return EVERYONE
        authorization = request.header(b"authorization")
        if self._is_admin(authorization):
            return EVERYONE
        return Caller(self.keys.identify(authorization, request.header(b"x-api-key")).name)

    def submitter(self, request: HttpRequest) -> Caller:
        """Who submits: a key within its limits (401, 429), in flight until :meth:`done`."""
        if not self.keys.on:
            return EVERYONE
        authorization = request.header(b"authorization")
        if self._is_admin(authorization):
            raise Unauthorized("the admin token is no API key: jobs and batches are submitted with an API key")
        entry = self.keys.admit(authorization, request.header(b"x-api-key"), None)
        return Caller(entry.name if entry is not None else None, entry, self.keys)

    def done(self, caller: Caller) -> None:
        """The submission has been answered: its key's place is free."""
        self.keys.done(caller.entry)

    def _is_admin(self, authorization: bytes | None) -> bool:
        return is_admin_token(self._admin_token, bearer_of(authorization))
