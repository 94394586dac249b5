#!/usr/bin/env bash
# Keep the gateway container running on this host. When it stops (POST /shutdown, or a crash) the
# loop starts it again, first pulling a newer image with --pull: /shutdown is how to update.
# Ctrl-C or SIGTERM stops the container (the gateway finishes its requests in flight) and the loop.
#
#   ./run.sh [--pull] [IMAGE]
#   BIS_ADMIN_TOKEN=<token> nohup ./run.sh --pull <account>/<repo> > run.log 2>&1 &
#
#   IMAGE            image to run (basic_inference_server); the argument wins
#   PULL             docker run --pull policy: missing (default), always (--pull), never
#   VOLUME           named volume (or host folder) for /aid_app/_cache: logs, state history (ai_vol)
#   NAME             container name (bis_gateway)
#   PORTS            docker run -p value (5002-5010:5002-5010)
#   BIS_ADMIN_TOKEN  admin token, passed to the container by name: its value stays off command lines
#   STOP_TIMEOUT     seconds the gateway gets to drain on stop before SIGKILL (30)
#   RESTART_DELAY    seconds between a stop and the next start (5)
#   NOFILE           open-file limit for the container (one per client connection), e.g. 65536;
#                    unset: Docker's default, which is usually higher already
set -u

IMAGE="${IMAGE:-basic_inference_server}"
PULL="${PULL:-missing}"
VOLUME="${VOLUME:-ai_vol}"
NAME="${NAME:-bis_gateway}"
PORTS="${PORTS:-5002-5010:5002-5010}"
STOP_TIMEOUT="${STOP_TIMEOUT:-30}"
RESTART_DELAY="${RESTART_DELAY:-5}"
NOFILE="${NOFILE:-}"

while [ $# -gt 0 ]; do
  case "$1" in
    --pull) PULL=always ;;
    --pull=*) PULL="${1#--pull=}" ;;
    -h | --help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { print substr($0, 3) }' "$0"; exit 0 ;;
    -*) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) IMAGE="$1" ;;
  esac
  shift
done

stopping=0
# shellcheck disable=SC2317  # reached through the trap
on_signal() {
  stopping=1
  echo "run.sh: stopping $NAME" >&2
  docker stop --time "$STOP_TIMEOUT" "$NAME" > /dev/null 2>&1 || true
}
trap on_signal INT TERM

while [ "$stopping" -eq 0 ]; do
  # In the background so that the trap runs at once: `wait` returns when a signal arrives, while
  # bash would only act on it after a foreground `docker run` ended.
  docker run --rm --name "$NAME" --pull="$PULL" --stop-timeout "$STOP_TIMEOUT" \
    ${NOFILE:+--ulimit "nofile=$NOFILE:$NOFILE"} \
    -p "$PORTS" \
    -v "$VOLUME":/aid_app/_cache \
    ${BIS_ADMIN_TOKEN:+-e BIS_ADMIN_TOKEN} \
    "$IMAGE" &
  child=$!
  wait "$child"
  code=$?
  if [ "$stopping" -eq 1 ]; then
    # The trap stopped the container, unless it was only being created then: stop it until
    # docker run ends, and take docker run's own exit code.
    tries=0
    while kill -0 "$child" 2> /dev/null; do
      docker stop --time "$STOP_TIMEOUT" "$NAME" > /dev/null 2>&1 || sleep 1
      tries=$((tries + 1))
      if [ "$tries" -gt 10 ]; then  # the container is gone but the client hangs: do not hang with it
        kill "$child" 2> /dev/null
      fi
    done
    wait "$child"
    code=$?
    echo "run.sh: gateway container exited with code $code; not restarting" >&2
    break
  fi
  echo "run.sh: gateway container exited with code $code; starting it again in ${RESTART_DELAY}s" >&2
  sleep "$RESTART_DELAY" &
  wait $!
done
exit 0
