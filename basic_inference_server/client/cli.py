"""``bis``: the gateway from the command line (``python -m basic_inference_server.client``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..states import ReloadState
from . import render
from .cliargs import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_UNKNOWN_SIGNATURE,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    UsageError,
    parse_inputs,
    print_json,
    seconds,
)
from .core import Client
from .errors import BadInput, ClientError, ConnectionFailed, Unauthorized, Unavailable, UnknownSignature
from .jobs_cli import add_job_commands

PROG = "bis"
DEFAULT_URL = "http://127.0.0.1:5002"
DEFAULT_TIMEOUT = 65.0  # above the endpoints' default REQUEST_TIMEOUT (60 s): the gateway's 504 comes first
MAX_CONNECT_TIMEOUT = 10.0


EPILOG = f"""\
exit codes:
  {EXIT_OK}  success
  {EXIT_ERROR}  the model or the gateway failed (500, 502, 504, timeout), admin token refused, other errors
  {EXIT_USAGE}  usage error, or the input was rejected (400, 413, 422)
  {EXIT_UNREACHABLE}  nothing answers at the URL, or the endpoint/gateway is unavailable (503)
  {EXIT_UNKNOWN_SIGNATURE}  unknown signature (404)

environment:
  BIS_URL          gateway URL (default {DEFAULT_URL})
  BIS_ADMIN_TOKEN  admin token, for `{PROG} reload` and `{PROG} shutdown` (default: the gateway's own,
                   in _cache/_data/admin_token, when run from the gateway's folder)
  BIS_API_KEY      an API key, sent with every request (when the gateway has BIS_API_KEYS_FILE)

examples:
  {PROG} run dummy_model_demo2 INPUT_VALUE=3
  {PROG} run dummy_model_demo1 --data '{{"INPUT_VALUE": "casa", "LANGUAGE": "ro"}}'
  {PROG} run dummy_model_demo1 --data @inputs.json LANGUAGE=en
  {PROG} run --stream my_streaming_model PROMPT=hello
  {PROG} servers
  {PROG} --json status
  {PROG} notifications dummy_model_demo2
  {PROG} reload                  (the configuration, read again)
  {PROG} reload sentiment        (one endpoint's changed file)
  {PROG} --token "$(cat _cache/_data/admin_token)" shutdown
  {PROG} jobs submit dummy_model_demo2 INPUT_VALUE=3 --priority 9
  {PROG} jobs wait job_0123456789abcdef01234567 --for 60
"""


TOKEN_FILE = "_cache/_data/admin_token"  # where a gateway run from this folder keeps the token it made


def _stored_token() -> str | None:
    try:
        return open(TOKEN_FILE, encoding="utf-8").read().strip() or None
    except OSError:
        return None


# -- commands -----------------------------------------------------------------------------------
def cmd_run(client: Client, args: argparse.Namespace) -> int:
    inputs = parse_inputs(args.inputs, args.data, args.signature)
    if args.stream:
        return _run_stream(client, args.signature, inputs, args.json)
    try:
        answer = client.run(args.signature, **inputs)
    except ValueError as exc:  # a value that cannot be sent as JSON
        raise UsageError(str(exc)) from None
    # The model's answer is what a user asked for; --json adds the envelope (call_id, time, ...).
    print_json(answer if args.json or "predict_result" not in answer else answer["predict_result"])
    return EXIT_OK


def _run_stream(client: Client, signature: str, inputs: dict[str, Any], with_end: bool) -> int:
    """``bis run --stream``: each item as one JSON line as soon as it arrives; ``--json`` adds the
    end line ``{"END": <envelope>}``. An error mid-stream goes to stderr after the items printed."""
    try:
        items = client.stream(signature, **inputs)
    except ValueError as exc:  # a value that cannot be sent as JSON
        raise UsageError(str(exc)) from None
    with items:  # Ctrl-C or a closed pipe closes the connection, and the gateway cancels the request
        for item in items:
            print(json.dumps(item, ensure_ascii=False), flush=True)
    if with_end:
        print(json.dumps({"END": items.envelope}, ensure_ascii=False), flush=True)
    return EXIT_OK


def cmd_servers(client: Client, args: argparse.Namespace) -> int:
    answer = client.list_servers()
    if args.json:
        print_json(answer)
    else:
        print(render.servers_text(answer))
    return EXIT_OK


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    answer = client.system_status()
    if args.json:
        print_json(answer)
    else:
        print(render.status_text(answer))
    return EXIT_OK


def cmd_notifications(client: Client, args: argparse.Namespace) -> int:
    answer = client.notifications(args.signature)
    if args.json:
        print_json(answer)
    else:
        print(render.notifications_text(answer, args.signature))
    return EXIT_OK


def cmd_reload(client: Client, args: argparse.Namespace) -> int:
    answer = client.reload(args.signature)
    failed = dict(answer.get("FAILED") or {})  # endpoints whose file does not load
    failed.update({r["SIGNATURE"]: r["ERROR"] for r in answer.get("RELOADS") or ()
                   if ReloadState.read(r.get("STATE")) is ReloadState.FAILED})
    if args.json:
        print_json(answer)
    else:
        print(answer.get("MESSAGE", "OK"))
        for key in ("ADDED", "REMOVED", "CHANGED", "STARTED"):
            if answer.get(key):
                print(f"  {key.lower()}: {', '.join(answer[key])}")
        for name, why in failed.items():
            print(f"  FAILED {name}: {why}")
    return EXIT_ERROR if failed else EXIT_OK


def cmd_shutdown(client: Client, args: argparse.Namespace) -> int:
    answer = client.shutdown()
    if args.json:
        print_json(answer)
    else:
        print(answer.get("MESSAGE", "OK"))
    return EXIT_OK


# -- parser -------------------------------------------------------------------------------------
def _add_global_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """The options every command takes, before or after its name (``bis --json servers`` and
    ``bis servers --json``): the sub-parsers' copies default to SUPPRESS so they do not reset
    what was given before the command."""

    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument("--url", default=default(os.environ.get("BIS_URL") or DEFAULT_URL),
                        help=f"gateway URL (default: $BIS_URL or {DEFAULT_URL})")
    parser.add_argument("--token", default=default(os.environ.get("BIS_ADMIN_TOKEN") or _stored_token()),
                        help=f"admin token (default: $BIS_ADMIN_TOKEN, else the one the gateway stored in "
                             f"{TOKEN_FILE} of this folder)")
    parser.add_argument("--api-key", default=default(os.environ.get("BIS_API_KEY")),
                        help="an API key, sent as X-API-Key with every request (default: $BIS_API_KEY)")
    parser.add_argument("--timeout", type=seconds, default=default(DEFAULT_TIMEOUT), metavar="SECONDS",
                        help=f"seconds to wait for an answer (default {DEFAULT_TIMEOUT:g}; connecting: at most "
                             f"{MAX_CONNECT_TIMEOUT:g})")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="print the gateway's JSON answer instead of text")


def build_parser() -> argparse.ArgumentParser:
    """The ``bis`` argument parser."""
    parser = argparse.ArgumentParser(prog=PROG, description="Call a basic_inference_server gateway.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_global_options(parser, defaults=True)
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, defaults=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, handler: Callable[[Client, argparse.Namespace], int], help_text: str,
                **kwargs: Any) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help_text, description=help_text, **kwargs)
        sub.set_defaults(handler=handler)
        return sub

    run = command("run", cmd_run, "run an endpoint and print its predict_result",
                  epilog="VALUEs are JSON when they parse (3, true, [1,2], \"3\"), else text (casa).")
    run.add_argument("signature", metavar="SIGNATURE", help="the endpoint, e.g. dummy_model_demo2")
    run.add_argument("inputs", nargs="*", metavar="KEY=VALUE", help="an input, e.g. INPUT_VALUE=3")
    run.add_argument("--data", metavar="JSON|@FILE", help="inputs as a JSON object, from a file with @FILE "
                                                            "or stdin with @-; KEY=VALUEs are applied over it")
    run.add_argument("--stream", action="store_true",
                     help="stream the items of a model that yields them: one JSON line per item as it arrives "
                          "(--json adds a last line {\"END\": <envelope>}); Ctrl-C cancels the request")
    command("servers", cmd_servers, "table of the model servers and support processes")
    command("status", cmd_status, "memory, disk, alerts and history of the gateway's machine")
    notes = command("notifications", cmd_notifications, "print (and clear) the notifications of an endpoint, "
                                                        "or of every READY endpoint")
    notes.add_argument("signature", nargs="?", metavar="SIGNATURE", help="the endpoint (default: all)")
    reload = command("reload", cmd_reload, "put a changed configuration (or, with SIGNATURE, an endpoint's changed "
                                           "file) in force without a restart (needs the admin token)")
    reload.add_argument("signature", nargs="?", metavar="SIGNATURE", help="an endpoint, or * for all (default: "
                                                                        "read the configuration again)")
    command("shutdown", cmd_shutdown, "stop the gateway and its servers (needs the admin token)")
    add_job_commands(command, common)
    keys = command("keys", cmd_keys, "API keys: `bis keys add NAME` makes one, prints it once and adds its entry "
                                     "(hashed) to the keys file")
    keys.add_argument("keys_command", choices=["add"], metavar="add")
    keys.add_argument("name", metavar="NAME", help="the key's name (in metrics and logs; the key itself never is)")
    keys.add_argument("--file", default=os.environ.get("BIS_API_KEYS_FILE"),
                      help="the keys file (default: $BIS_API_KEYS_FILE); made when missing")
    keys.add_argument("--endpoints", default="*", help="the endpoints it may call, comma-separated (default: *)")
    keys.add_argument("--rps", type=float, help="requests per second it may make (a token bucket)")
    keys.add_argument("--burst", type=float, help="requests it may make at once above RPS (default: RPS)")
    keys.add_argument("--concurrency", type=int, help="requests it may have in flight")
    return parser


def cmd_keys(_client: Client, args: argparse.Namespace) -> int:
    """``bis keys add NAME``: a new key, printed once (stdout), its hash added to the file."""
    from ..apikeyfile import add_key

    if not args.file:
        raise UsageError("no keys file: give --file or set BIS_API_KEYS_FILE")
    try:
        key = add_key(Path(args.file), args.name, [e.strip() for e in args.endpoints.split(",") if e.strip()],
                      args.rps, args.burst, args.concurrency)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(key)
    print(f"added {args.name!r} to {args.file}; the gateway uses it after SIGHUP or /reload_config "
          "(the key is shown only now)", file=sys.stderr)
    return 0


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``, letting ``bis run`` take its KEY=VALUEs before and after its options
    (argparse alone stops collecting a ``*`` positional at the first option)."""
    args, extras = parser.parse_known_args(argv)
    if args.command == "run" or (args.command == "jobs" and args.jobs_command == "submit"):
        pairs = [item for item in extras if "=" in item and not item.startswith("-")]
        args.inputs += pairs
        extras = [item for item in extras if item not in pairs]
    if extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


# -- entry point --------------------------------------------------------------------------------
def exit_code(exc: ClientError) -> int:
    """The exit code for a client error (see the epilog)."""
    if isinstance(exc, UnknownSignature):
        return EXIT_UNKNOWN_SIGNATURE
    if isinstance(exc, (ConnectionFailed, Unavailable)):
        return EXIT_UNREACHABLE
    if isinstance(exc, BadInput):
        return EXIT_USAGE
    return EXIT_ERROR


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run ``bis`` with ``argv`` (default: the command line) and return its exit code."""
    parser = build_parser()
    try:
        args = _parse(parser, argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    timeout = (min(args.timeout, MAX_CONNECT_TIMEOUT), args.timeout)
    try:
        with Client(args.url, token=args.token, timeout=timeout, api_key=args.api_key) as client:
            return args.handler(client, args)
    except UsageError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except ClientError as exc:
        hint = ""
        if isinstance(exc, ConnectionFailed):
            hint = "; is the gateway running there? (--url or BIS_URL)"
        elif isinstance(exc, Unauthorized) and not args.token:
            hint = f"; pass --token or set BIS_ADMIN_TOKEN (a gateway keeps the token it made in {TOKEN_FILE})"
        _error(f"{exc}{hint}")
        return exit_code(exc)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `bis ... | head`: stop quietly, and keep Python's exit-time flush quiet too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
