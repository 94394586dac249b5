"""``basic-inference-server endpoint <name>``: one endpoint's model server as a process of its own.

It reads the same ``config_gateway.txt`` (or ``--config``) and ``endpoints/`` as the gateway and
runs that endpoint's model server in this process, listening on ``--host``/``--port`` (default:
the endpoint's HOST and the configuration's first server port), with the same ``/health``,
``/run``, ``/stats``, logs (``_cache/_logs/server_<name>.txt``) and drain on SIGTERM as a child of
the gateway, but no internal channel: clients (a gateway elsewhere, or anyone) call its HTTP port.
With ``BIS_ENDPOINT_TOKEN`` in the environment, ``POST /run`` answers 401 unless the request
carries the same value in ``X-Endpoint-Token`` (``/health`` stays open for probes); with
``BIS_TLS_CERT_FILE`` and ``BIS_TLS_KEY_FILE``, the port takes TLS only (:mod:`...tlsfiles`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading

from ..config import ConfigError
from ..logs import setup_process_logging
from ..server.__main__ import serve
from ..server.discovery import DiscoveryError
from .core import FlaskGateway

logger = logging.getLogger("basic_inference_server.endpoint")

EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="basic-inference-server endpoint",
                                     description="run one endpoint's model server on its own")
    parser.add_argument("name", help="the endpoint, as named in CONFIG_ENDPOINTS")
    parser.add_argument("--config", default="config_gateway.txt", help="configuration file")
    parser.add_argument("--host", default=None, help="address to listen on (default: the endpoint's HOST)")
    parser.add_argument("--port", type=int, default=None, help="port (default: FIRST_SERVER_PORT, 5003)")
    parser.add_argument("-b", "--base_folder", default=".", help="folder holding the cache folder (default .)")
    parser.add_argument("-a", "--app_folder", default="_cache", help="cache folder (default _cache)")
    parser.add_argument("--endpoints", default="endpoints", help="dotted endpoints folder")
    return parser


def endpoint_main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    cache = os.path.join(args.base_folder, args.app_folder)
    setup_process_logging(f"server:{args.name}", os.path.join(cache, "_logs"), file_stem=f"server_{args.name}")
    try:
        gateway = FlaskGateway(workers_location=args.endpoints, config_file=args.config,
                               base_folder=args.base_folder, app_folder=args.app_folder, run=False)
    except (ConfigError, DiscoveryError) as exc:
        logger.error("Configuration error: %s", exc)
        return EXIT_CONFIG
    endpoints = {e.name: e for e in gateway.config.endpoints if not e.is_support}
    endpoint = endpoints.get(args.name)
    if endpoint is None:
        logger.error("No endpoint %r in %s; the endpoints are %s", args.name, args.config, sorted(endpoints))
        return EXIT_CONFIG
    if args.host:
        endpoint = dataclasses.replace(endpoint, host=args.host)
    sup = gateway.supervisor
    sup.run_folder.mkdir(parents=True, exist_ok=True)
    spec = sup.server_spec(endpoint, endpoint.name, args.port or gateway.config.first_server_port, "",
                           sup.run_folder / f"{endpoint.name}.error", endpoint.nr_workers)
    code = serve(dataclasses.replace(spec, standalone=True), stop)
    logging.shutdown()
    sys.stdout.flush()
    os._exit(code)  # worker threads stuck in user code must not keep a stopped server alive
