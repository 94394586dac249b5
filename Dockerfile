# The gateway with the endpoints of ./endpoints and ./config_gateway.txt.
#   docker build -t basic_inference_server .
#   docker run -p 5002-5010:5002-5010 -v ai_vol:/aid_app/_cache basic_inference_server
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    AID_APP_DOCKER=Yes \
    AID_APP_ID=BaseAidApp \
    TZ=UTC

WORKDIR /aid_app

# Dependencies first: this layer is rebuilt only when requirements.txt changes.
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY . .
RUN useradd --create-home --uid 10001 bis \
    && mkdir -p /aid_app/_cache \
    && chown -R bis:bis /aid_app/_cache
USER bis

EXPOSE 5002-5010
VOLUME /aid_app/_cache
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:5002/ready', timeout=4).status != 200)"]
STOPSIGNAL SIGTERM
CMD ["python", "run_gateway.py"]
