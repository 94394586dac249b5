"""Support process: posts this machine's metrics to the gateway every PING_INTERVAL seconds.

The gateway runs it as ``python endpoints/support_process.py --config_endpoint '<json>'`` for the
``support_process`` entry of config_gateway.txt (``"HOST": "NO_HOST"``); the JSON holds the
entry plus SERVER, SERVER_PORT, SERVER_PATH (where to post) and SUPPORT_NAME. The latest post
shows in SYSTEM_STATUS.system_support_services. SIGTERM stops it at once.
"""

import argparse
import json
import signal
import threading
import time

import psutil
import requests

import basic_inference_server as bis

__VERSION__ = "1.0.0"
GB = 1024**3


def collect_metrics(run_count, started):
    memory = psutil.virtual_memory()
    disk = psutil.disk_usage("/")
    return {
        "run_count": run_count,
        "uptime_s": round(time.monotonic() - started, 1),
        "cpu_percent": psutil.cpu_percent(interval=None),
        "load_avg": [round(x, 2) for x in psutil.getloadavg()],
        "total_memory": round(memory.total / GB, 3),
        "available_memory": round(memory.available / GB, 3),
        "memory_percent": memory.percent,
        "total_disk": round(disk.total / GB, 3),
        "available_disk": round(disk.free / GB, 3),
        "app_used_memory": round(psutil.Process().memory_info().rss / GB, 3),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config_endpoint", type=str, default="{}", help="JSON configuration of the entry")
    config = json.loads(parser.parse_args().config_endpoint)

    log = bis.Logger(lib_name="SPRC", base_folder=".", app_folder="_cache", TF_KERAS=False)
    log.update_config_data(config)
    name = config.get("SUPPORT_NAME", "support_process")
    interval = float(config.get("PING_INTERVAL", 10))
    url = "http://{}:{}{}".format(config["SERVER"], config["SERVER_PORT"], config["SERVER_PATH"])

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    log.P(f"Support process {name} v{__VERSION__}: posting metrics to {url} every {interval:g}s")

    started = time.monotonic()
    psutil.cpu_percent(interval=None)  # the first reading only starts the measurement
    run_count = 0
    with requests.Session() as session:
        while not stop.wait(interval):
            run_count += 1
            data = collect_metrics(run_count, started)
            try:
                reply = session.post(url, json={"SIGNATURE": name, "data": data}, timeout=5)
                if reply.status_code != 200:
                    log.P(f"Gateway refused the metrics: HTTP {reply.status_code} {reply.text[:200]}", color="r")
            except requests.RequestException as exc:
                log.P(f"Cannot reach the gateway at {url}: {exc}", color="r")
    log.P(f"Support process {name} stopped after {run_count} posts")


if __name__ == "__main__":
    main()
