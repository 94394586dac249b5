"""``bis jobs`` and ``bis batches``: durable jobs from the command line (see the jobs guide)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from .cliargs import EXIT_ERROR, EXIT_OK, UsageError, parse_inputs, print_json, seconds
from .core import Client

STATES = ["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"]


def cmd_jobs(client: Client, args: argparse.Namespace) -> int:
    """``bis jobs submit|get|wait|cancel|list``: durable jobs (see the jobs guide)."""
    action = args.jobs_command
    if action == "submit":
        inputs = parse_inputs(args.inputs, args.data, args.signature)
        try:
            job = client.submit(args.signature, priority=args.priority, webhook=args.webhook,
                                idempotency_key=args.idempotency_key, **inputs)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        print_json(job.last)
    elif action == "list":
        print_json(client.jobs(status=args.status, signature=args.signature, limit=args.limit, cursor=args.cursor))
    else:
        job = client.job(args.job_id)
        if action == "wait":
            job.wait(args.wait_timeout)
        elif action == "cancel":
            job.cancel()
        print_json(job.last)
        if action == "wait" and job.last["STATUS"] != "SUCCEEDED":
            return EXIT_ERROR
    return EXIT_OK


def _jobs_actions(jobs: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    actions = jobs.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    submit = actions.add_parser("submit", parents=[common], help="submit a job; prints it (JOB_ID, STATUS)")
    submit.add_argument("signature", metavar="SIGNATURE")
    submit.add_argument("inputs", nargs="*", metavar="KEY=VALUE")
    submit.add_argument("--data", metavar="JSON|@FILE", help="inputs as a JSON object, as for run")
    submit.add_argument("--priority", type=int, choices=range(10), metavar="0-9", help="higher runs first")
    submit.add_argument("--webhook", metavar="URL", help="POSTed the job when it ends")
    submit.add_argument("--idempotency-key", metavar="KEY", help="a resubmission with it returns the same job")
    for name, text in (("get", "print a job"), ("cancel", "cancel a queued or running job")):
        actions.add_parser(name, parents=[common], help=text).add_argument("job_id", metavar="JOB_ID")
    wait = actions.add_parser("wait", parents=[common], help="wait until a job ends, print it (exit 1 unless "
                                                             "it SUCCEEDED)")
    wait.add_argument("job_id", metavar="JOB_ID")
    wait.add_argument("--for", dest="wait_timeout", type=seconds, metavar="SECONDS", help="give up after")
    listing = actions.add_parser("list", parents=[common], help="list jobs, newest first")
    listing.add_argument("--status", choices=STATES)
    listing.add_argument("--signature", metavar="SIGNATURE")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--cursor", metavar="CURSOR", help="NEXT_CURSOR of the page before")


def cmd_batches(client: Client, args: argparse.Namespace) -> int:
    """``bis batches submit|get|results``."""
    action = args.batches_command
    if action == "submit":
        try:
            text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read {args.file!r}: {exc.strerror}") from None
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as exc:
                    raise UsageError(f"{args.file} line {number} is not JSON: {exc}") from None
        print_json(client.batch(rows).last)
        return EXIT_OK
    batch = client.batch_of(args.batch_id)
    if action == "get":
        print_json(batch.last)
        return EXIT_OK
    for row in batch.results(args.wait_timeout):
        print(json.dumps(row, ensure_ascii=False))
    return EXIT_OK


def add_job_commands(command: Callable[..., argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """``bis jobs ...`` and ``bis batches ...`` (``command``: how ``bis`` adds one)."""
    _jobs_actions(command("jobs", cmd_jobs, "durable jobs: submit, get, wait, cancel, list"), common)
    batches = command("batches", cmd_batches, "many jobs at once from NDJSON: submit, get, results")
    actions = batches.add_subparsers(dest="batches_command", metavar="ACTION", required=True)
    submit = actions.add_parser("submit", parents=[common], help="submit a file of /run bodies, one per line, each "
                                                                 "with its custom_id (- reads stdin)")
    submit.add_argument("file", metavar="FILE")
    actions.add_parser("get", parents=[common], help="a batch's counts by state").add_argument(
        "batch_id", metavar="BATCH_ID")
    results = actions.add_parser("results", parents=[common], help="wait for a batch, then print one JSON line per "
                                                                   "input line, in order")
    results.add_argument("batch_id", metavar="BATCH_ID")
    results.add_argument("--for", dest="wait_timeout", type=seconds, metavar="SECONDS", help="give up after")
