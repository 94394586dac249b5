"""The durable jobs' routes in the gateway's OpenAPI description (:mod:`.openapi`)."""

from __future__ import annotations

from typing import Any

from .openapi_build import Schema, _answer, _body, _error, _int, _nullable, _obj, _operation, _schema, _str

TAG = "jobs"
NDJSON = "application/x-ndjson"
_STATES = ["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"]
_JOB_ID = {"name": "job_id", "in": "path", "required": True, "description": "the JOB_ID a submission answered",
           "schema": _str()}
_OWNER = _str("with API keys (BIS_API_KEYS_FILE): the name of the key that submitted it, the only key that sees it")


def jobs_schemas() -> dict[str, Schema]:
    time = _nullable(_str("ISO 8601, UTC", format="date-time"))
    job = {
        "JOB_ID": _str(), "SIGNATURE": _str(), "STATUS": _str(enum=_STATES),
        "PRIORITY": _int(minimum=0, maximum=9), "CREATED": _str("ISO 8601, UTC", format="date-time"),
        "STARTED": time, "FINISHED": time, "ATTEMPTS": _int(minimum=0), "WEBHOOK": _str(),
        "OWNER": _OWNER,
    }
    required = ["JOB_ID", "SIGNATURE", "STATUS", "PRIORITY", "CREATED", "STARTED", "FINISHED", "ATTEMPTS"]
    return {
        "JobRequest": _obj({
            "SIGNATURE": _str("the endpoint to run; any other key is the model's input, as for /run"),
            "PRIORITY": _int(minimum=0, maximum=9, description="higher runs first (default 5); removed before "
                             "the hooks"),
            "WEBHOOK": _str("an http:// or https:// URL told when the job ends; removed before the hooks"),
        }, ["SIGNATURE"], additionalProperties=True),
        "JobSummary": _obj(job, required),
        "Job": _obj({**job, "RESULT": _obj(description="what /run answered (SUCCEEDED)", additionalProperties=True),
                     "ERROR": _schema("Error")}, required),
        "Batch": _obj({"BATCH_ID": _str(), "STATUS": _str(enum=["IN_PROGRESS", "COMPLETED"]),
                       "CREATED": _str(format="date-time"), "TOTAL": _int(minimum=1),
                       "COUNTS": _obj({state: _int(minimum=0) for state in _STATES}, _STATES), "OWNER": _OWNER},
                      ["BATCH_ID", "STATUS", "CREATED", "TOTAL", "COUNTS"]),
        "JobList": _obj({"JOBS": {"type": "array", "items": _schema("JobSummary")},
                         "NEXT_CURSOR": _nullable(_str("pass as cursor for the next page"))}, ["JOBS", "NEXT_CURSOR"]),
    }


def jobs_paths(signatures: list[str]) -> dict[str, Any]:
    examples = {name: {"SIGNATURE": name} for name in signatures}
    location = {"Location": {"required": True, "description": "/jobs/<JOB_ID>", "schema": _str()}}
    idempotency = {"name": "Idempotency-Key", "in": "header", "required": False, "schema": _str(minLength=1,
                   maxLength=255), "description": "a resubmission with the same key returns the same job (200)"}
    submit = _operation(
        "submitJob", "Submit a durable job: answered once it is on disk", TAG, {
            "202": _answer("queued", _schema("Job"), headers=location),
            "200": _answer("the job this Idempotency-Key made before", _schema("Job"), headers=location),
            "400": "BadRequest", "404": "NotFound", "413": "PayloadTooLarge",
            "507": _error("the job store is over JOB_STORE_MAX_MB")},
        body=_body(_schema("JobRequest"), examples=examples), parameters=[idempotency],
        description="The same body as /run. POST /run with the header Prefer: respond-async does the same.")
    query = [
        {"name": "status", "in": "query", "required": False,
         "schema": _str(enum=_STATES + [state.lower() for state in _STATES])},
        {"name": "signature", "in": "query", "required": False, "schema": _str()},
        {"name": "limit", "in": "query", "required": False, "schema": _int(minimum=1, maximum=1000)},
        {"name": "cursor", "in": "query", "required": False, "schema": _str(pattern="^[0-9]+$")},
    ]
    listing = _operation("listJobs", "List jobs, newest first, without their results", TAG, {
        "200": _answer("a page of jobs", _schema("JobList")), "400": "BadRequest"}, parameters=query)
    wait = {"name": "wait", "in": "query", "required": False, "description": "seconds to wait for the job to end "
            "(at most 300)", "schema": {"type": "number", "minimum": 0, "maximum": 300}}
    get = _operation("getJob", "A job, with its RESULT or ERROR once it has ended", TAG, {
        "200": _answer("the job", _schema("Job")), "400": "BadRequest", "404": "NotFound"},
        parameters=[_JOB_ID, wait])
    cancel = _operation("cancelJob", "Cancel a queued or running job", TAG, {
        "200": _answer("cancelled", _schema("Job")), "404": "NotFound",
        "409": _error("the job has ended: nothing to cancel")}, parameters=[_JOB_ID])
    events = _operation("jobEvents", "A job's items as Server-Sent Events: those kept, then each new one, then the end",
                        TAG, {"200": _answer("data: <item> per item, then event: end with the job",
                                             {"type": "string"}, media_type="text/event-stream"),
                              "404": "NotFound"}, parameters=[_JOB_ID])
    return {"/jobs": {"post": submit, "get": listing}, "/jobs/{job_id}": {"get": get, "delete": cancel},
            "/jobs/{job_id}/events": {"get": events}, **_batch_paths()}


def _batch_paths() -> dict[str, Any]:
    batch_id = {"name": "batch_id", "in": "path", "required": True, "schema": _str(),
                "description": "the BATCH_ID a submission answered"}
    lines = {"type": "string", "description": "one /run body per line, each with its custom_id"}
    submit = _operation("submitBatch", "Submit many jobs as NDJSON: answered once they are all on disk", TAG, {
        "202": _answer("queued (a line that cannot be read is a FAILED job naming its line)", _schema("Batch"),
                       headers={"Location": {"required": True, "description": "/batches/<BATCH_ID>",
                                             "schema": _str()}}),
        "400": "BadRequest", "413": "PayloadTooLarge",
        "415": _error("not sent as application/x-ndjson"),
        "507": _error("the job store is over JOB_STORE_MAX_MB")},
        body={"required": True, "content": {NDJSON: {"schema": lines}}})
    get = _operation("getBatch", "A batch's jobs counted by state", TAG, {
        "200": _answer("the batch", _schema("Batch")), "404": "NotFound"}, parameters=[batch_id])
    results = _operation("getBatchResults", "One line per input line, in input order, once every job has ended",
                         TAG, {"200": _answer("custom_id, status, and response or error, per line",
                                              {"type": "string"}, media_type=NDJSON),
                               "404": "NotFound", "409": _error("some jobs have not ended (their counts)")},
                         parameters=[batch_id])
    return {"/batches": {"post": submit}, "/batches/{batch_id}": {"get": get},
            "/batches/{batch_id}/results": {"get": results}}
