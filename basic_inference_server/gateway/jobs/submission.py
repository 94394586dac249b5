"""How a submission's body is read (``POST /jobs``, ``/run`` with ``Prefer: respond-async``, a
batch's line): its endpoint, its own fields (``PRIORITY``, ``WEBHOOK``) and the body its hooks get."""

from __future__ import annotations

import re

from ... import jsonbody, jsonutil
from ...errors import BadRequest
from ...jsonbody import JsonLimits
from ..routing.router import Router
from .webhooks import check_url


def read_submission(body: bytes, limits: JsonLimits,
                    allowed: tuple[str, ...] | None) -> tuple[str, int, str | None, bytes]:
    """(signature, priority, webhook, the body without the job's fields) of a submission, read
    within the MAX_JSON_* limits as ``/run``'s bodies are."""
    data = jsonbody.loads_object(body, limits)
    signature = jsonbody.signature_of(data)
    priority = data.pop("PRIORITY", 5)
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
        raise BadRequest(f"PRIORITY: expected an integer from 0 to 9 (higher runs first), got {priority!r}")
    webhook = data.pop("WEBHOOK", None)
    if webhook is not None:
        if not isinstance(webhook, str):
            raise BadRequest(f"WEBHOOK: expected an http:// or https:// URL, got {webhook!r}")
        check_url(webhook, allowed)
    return signature, priority, webhook, jsonutil.dumps_bytes(data)


_PRIORITY_AT = re.compile(rb'"PRIORITY"\s*:\s*')
_INTEGER = re.compile(rb"-?[0-9]+(?=\s*[,}\]])")
_WEBHOOK_AT = re.compile(rb'"WEBHOOK"\s*:\s*')
_STRING = re.compile(rb'"([^"\\]{0,4096})"')


def scan_submission(body: bytes, router: Router,
                    allowed: tuple[str, ...] | None) -> tuple[str, int, str | None, bytes]:
    """A submission over INLINE_SCAN bytes, read without parsing it (a large body costs the
    gateway's process no parsing, as on /run): routed by its first ``"SIGNATURE"``, its first
    ``"PRIORITY"`` and ``"WEBHOOK"`` taken as the job's; it is stored as it came, and its model
    server leaves those fields out of the inputs (the JOB flag)."""
    signature = router.signature_in(body)
    priority, webhook = 5, None
    if (at := _PRIORITY_AT.search(body)) is not None:
        value = _INTEGER.match(body, at.end())
        priority = int(value.group()) if value is not None else -1
        if not 0 <= priority <= 9:
            raise BadRequest("PRIORITY: expected an integer from 0 to 9 (higher runs first)")
    if (at := _WEBHOOK_AT.search(body)) is not None:
        value = _STRING.match(body, at.end())
        if value is None:
            raise BadRequest("WEBHOOK: expected an http:// or https:// URL (a string without escapes)")
        webhook = value.group(1).decode("utf-8", "replace")
        check_url(webhook, allowed)
    return signature, priority, webhook, body
