# The gateway with the endpoints of ./endpoints and ./config_gateway.txt, run as a non-root user.
#
#   docker build -t basic_inference_server .
#   docker run -d --name bis_gateway -p 5002-5010:5002-5010 -v ai_vol:/aid_app/_cache \
#       -e BIS_ADMIN_TOKEN --stop-timeout 30 basic_inference_server
#   ./run.sh does the same in a loop that starts it again after POST /shutdown (the way to update).
#
# Environment (override with `docker run -e NAME=value`):
#   AID_APP_DOCKER   "Yes" here: the start banner says "Docker: True".
#   AID_APP_ID       the name in the start banner ("Starting BaseAidApp, TZ: UTC, ...").
#   BIS_ADMIN_TOKEN  the admin token of /shutdown, /start_server, /kill_server, /update_workers.
#                    Never set in the image (a layer keeps it for anyone who pulls): pass it at run
#                    time; without it the gateway generates one into the volume, _data/admin_token.
#   BIS_LOG_LEVEL    log level of the gateway and its children (INFO when unset).
#   TZ               time zone of the timestamps in the logs, the answers and the state history.
#
# The cache volume holds _logs, _data (admin token, configuration overrides, gw_state_history.json)
# and _run. It belongs to uid 10001: a new named volume takes that owner from the image; a host
# folder must be chown'ed to 10001:10001 first.
#
# PID 1 is the gateway itself (exec-form CMD, no shell). On `docker stop` it gets SIGTERM, lets the
# requests in flight finish (SHUTDOWN_GRACE, 10 s), stops its model servers and exits 0: allow it
# more than docker's default 10 s (`docker stop -t 30`, `docker run --stop-timeout 30`). It also
# reaps orphaned processes (gateway/reaper.py), so no init (`--init`, tini) is needed.
#
# Every client connection is an open file: the gateway raises its soft limit to the hard one at
# start. Docker's default is usually 1048576; where it is lower, give it `--ulimit nofile=65536:65536`
# (`NOFILE=65536 ./run.sh`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AID_APP_DOCKER=Yes \
    AID_APP_ID=BaseAidApp \
    TZ=UTC

WORKDIR /aid_app

# Dependencies first: this layer is rebuilt only when requirements.txt or the endpoints' own
# requirements (endpoints/requirements.txt, their one home) change.
COPY requirements.txt .
COPY endpoints/requirements.txt endpoints/requirements.txt
RUN pip install --no-cache-dir -r requirements.txt -r endpoints/requirements.txt

# The cache folder is the volume's mount point: a new named volume gets its owner.
RUN useradd --create-home --uid 10001 --user-group bis \
    && mkdir -p /aid_app/_cache \
    && chown 10001:10001 /aid_app/_cache \
    && printf '#!/bin/sh\nexec python /aid_app/run_gateway.py endpoint "$@"\n' > /usr/local/bin/endpoint \
    && chmod 755 /usr/local/bin/endpoint

# The code stays root's (read-only for the gateway); .dockerignore keeps out _cache, venvs, tests.
COPY . .

USER 10001:10001
EXPOSE 5002-5010
VOLUME /aid_app/_cache

# 200 from /ready only when every model server is READY (Python: no curl in the slim image).
# BIS_HEALTH_URL changes what is probed: one endpoint's server run on its own (`endpoint <name>`)
# answers /health on its own port (https:// with TLS, checked against BIS_TLS_CA_FILE when set).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, ssl, sys, urllib.request\nca = os.environ.get('BIS_TLS_CA_FILE')\ntry:\n    urllib.request.urlopen(os.environ.get('BIS_HEALTH_URL', 'http://127.0.0.1:5002/ready'), timeout=4, context=ssl.create_default_context(cafile=ca) if ca else None)\nexcept Exception as exc:\n    sys.exit(f'not ready: {exc}')"]
STOPSIGNAL SIGTERM
# The gateway; `docker run <image> endpoint <name> --host 0.0.0.0 --port 5003` runs one endpoint's
# model server instead (with -e BIS_HEALTH_URL=http://127.0.0.1:5003/health).
CMD ["python", "run_gateway.py"]
