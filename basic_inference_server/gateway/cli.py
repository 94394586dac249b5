"""Command line of the gateway: ``run_gateway.py`` and the ``basic-inference-server`` script
(``... endpoint <name>`` runs one endpoint's model server instead: :mod:`.endpoint_cli`)."""

from __future__ import annotations

import argparse
import logging
import os
import platform
import signal
import sys
import threading

from ..config import ConfigError
from ..logs import setup_process_logging
from ..server.discovery import DiscoveryError
from .core import FlaskGateway, GatewayStartupError
from .supervision.ports import PortsExhausted

logger = logging.getLogger("basic_inference_server.gateway")

EXIT_CONFIG = 2
EXIT_STARTUP = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="basic_inference_server gateway")
    parser.add_argument("-b", "--base_folder", default=".", help="folder holding the cache folder (default .)")
    parser.add_argument("-a", "--app_folder", default="_cache", help="cache folder: logs, data, state (default _cache)")
    parser.add_argument("--host", default="0.0.0.0", help="address the gateway listens on (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=5002, help="gateway port (default 5002)")
    parser.add_argument("--config", default="config_gateway.txt", help="configuration file")
    parser.add_argument("--first_server_port", type=int, default=None, help="first model-server port (default 5003)")
    parser.add_argument("--last_server_port", type=int, default=None, help="last model-server port (default first+7)")
    parser.add_argument("--endpoints", default="endpoints", help="dotted endpoints folder")
    parser.add_argument("--strict", action="store_true",
                        help="exit with code 2 when an endpoint fails to start (its file does not import, its model "
                             "does not load) instead of serving the others (as STRICT_STARTUP)")
    return parser


def main(argv: list[str] | None = None, app_version: str | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["endpoint"]:  # one endpoint's model server on its own (gateway/endpoint_cli.py)
        from .endpoint_cli import endpoint_main

        return endpoint_main(argv[1:])
    args = build_parser().parse_args(argv)
    # As PID 1 in a container a signal without a handler is ignored: catch a stop that arrives
    # while the gateway is still being built, and hand it to the gateway once it exists.
    early: list[int] = []
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda number, _frame: early.append(number))
    cache = os.path.join(args.base_folder, args.app_folder)
    try:
        setup_process_logging("gateway", os.path.join(cache, "_logs"), file_stem="gateway")
    except OSError as exc:
        print(f"basic_inference_server: cannot write the cache folder {os.path.abspath(cache)!r}: {exc.strerror}. "
              f"It must be writable by this user (uid {os.getuid()}); in Docker, chown the volume or "
              "host folder to that uid.", file=sys.stderr)
        return EXIT_STARTUP
    logger.info(
        "Starting %s, TZ: %s, py: %s, OS: %s, Docker: %s", os.environ.get("AID_APP_ID", "aid_app_bare_metal"),
        os.environ.get("TZ"), sys.version.split(" ")[0], platform.platform(),
        os.environ.get("AID_APP_DOCKER") == "Yes",
    )
    try:
        gateway = FlaskGateway(
            workers_location=args.endpoints, host=args.host, port=args.port,
            first_server_port=args.first_server_port, last_server_port=args.last_server_port,
            config_file=args.config, base_folder=args.base_folder, app_folder=args.app_folder,
            app_version=app_version, run=False, strict=args.strict,
        )
    except (ConfigError, DiscoveryError) as exc:
        logger.error("Configuration error: %s", exc)
        return EXIT_CONFIG
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, gateway.request_stop)
    if early:
        logger.info("Stop requested (signal %d) while starting: stopping", early[0])
        gateway.request_stop()
    try:
        return gateway.run()
    except (GatewayStartupError, PortsExhausted) as exc:
        logger.error("Startup failed: %s", exc)
        return EXIT_STARTUP


def console_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console_main()
