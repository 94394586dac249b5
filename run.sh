#!/usr/bin/env bash
# Keep the gateway container running on this host: when it stops (after POST /shutdown, or a
# crash) the loop starts it again, pulling a newer image first when PULL=always.
#   IMAGE=<account>/<repo> PULL=always nohup ./run.sh &
set -u
IMAGE="${IMAGE:-basic_inference_server}"
PULL="${PULL:-missing}"
VOLUME="${VOLUME:-ai_vol}"

while true; do
  docker run --rm --name bis_gateway --pull="$PULL" \
    -p 5002-5010:5002-5010 \
    -v "$VOLUME":/aid_app/_cache \
    ${BIS_ADMIN_TOKEN:+-e BIS_ADMIN_TOKEN} \
    "$IMAGE"
  echo "gateway container exited with code $?; restarting in 5 s" >&2
  sleep 5
done
