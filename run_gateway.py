"""Run the gateway with the endpoints of ./endpoints and ./config_gateway.txt.

    python run_gateway.py [-b .] [-a _cache] [--host 0.0.0.0] [--port 5002]
"""

import sys

from app_ver import __VER__ as APP_VER
from basic_inference_server.gateway.cli import main

if __name__ == "__main__":
    sys.exit(main(app_version=APP_VER))
