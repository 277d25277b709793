#!/usr/bin/env bash
# Runs on the GPU machine at every boot (tiergate-worker.service): start the model server,
# wait until it answers, then tell the gateway this instance is ready. The gateway also
# polls the worker's health itself, so the callback only makes readiness arrive sooner;
# a failed callback is logged, never fatal.
#
# Settings come from /etc/tiergate/worker.env (see worker.env.example).
set -euo pipefail

TIERGATE_BACKEND="${TIERGATE_BACKEND:-openai}"          # openai (vLLM) | gradio (Qwen3-VL web demo)
MODEL="${MODEL:-Qwen/Qwen3-VL-8B-Instruct}"
READY_TIMEOUT="${READY_TIMEOUT:-1800}"                   # seconds to wait for the model to load
METADATA_URL="${METADATA_URL:-http://100.100.100.200/latest/meta-data}"

log() { printf 'tiergate-worker: %s\n' "$*" >&2; }

instance_id() {
  if [[ -n "${INSTANCE_ID:-}" ]]; then
    printf '%s' "$INSTANCE_ID"
  else
    curl -fsS --max-time 5 --retry 5 --retry-delay 2 "$METADATA_URL/instance-id"
  fi
}

start_server() {
  case "$TIERGATE_BACKEND" in
    openai)
      PORT="${PORT:-8000}"
      # shellcheck disable=SC2086  # VLLM_ARGS is a list of extra flags on purpose
      "${VLLM:-vllm}" serve "$MODEL" --host 0.0.0.0 --port "$PORT" ${VLLM_ARGS:-} &
      ;;
    gradio)
      PORT="${PORT:-7860}"
      cd "${QWEN_DEMO_DIR:?set QWEN_DEMO_DIR to the Qwen3-VL checkout holding web_demo_mm.py}"
      # shellcheck disable=SC2086  # DEMO_ARGS is a list of extra flags on purpose
      "${PYTHON:-python}" web_demo_mm.py -c "$MODEL" --server-name 0.0.0.0 --server-port "$PORT" ${DEMO_ARGS:-} &
      ;;
    *)
      log "TIERGATE_BACKEND must be 'openai' or 'gradio', not '$TIERGATE_BACKEND'"
      exit 2
      ;;
  esac
  SERVER_PID=$!
}

# shellcheck disable=SC2329  # invoked by the TERM/INT trap in main
stop_server() {
  kill -TERM "$SERVER_PID" 2>/dev/null || true
}

answers() {
  local base="http://127.0.0.1:$PORT"
  if [[ "$TIERGATE_BACKEND" == "openai" ]]; then
    curl -fs --max-time 3 -o /dev/null "$base/health" || curl -fs --max-time 3 -o /dev/null "$base/v1/models"
  else
    curl -fs --max-time 3 -o /dev/null "$base/config"
  fi
}

wait_until_answers() {
  local deadline=$((SECONDS + READY_TIMEOUT))
  until answers; do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      log "the model server exited before it answered"
      wait "$SERVER_PID" || exit $?
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      log "the model server did not answer within ${READY_TIMEOUT}s"
      return 1
    fi
    sleep 2
  done
}

notify_gateway() {
  local id="$1"
  if [[ -z "${TIERGATE_URL:-}" || -z "${TIERGATE_CALLBACK_TOKEN:-}" ]]; then
    log "TIERGATE_URL or TIERGATE_CALLBACK_TOKEN not set: skipping the ready callback (the gateway still polls health)"
    return 0
  fi
  if curl -fsS --max-time 10 --retry 5 --retry-delay 3 --retry-all-errors -o /dev/null -X POST \
      -H "Authorization: Bearer $TIERGATE_CALLBACK_TOKEN" "${TIERGATE_URL%/}/api/instances/$id/ready"; then
    log "told $TIERGATE_URL that $id is ready"
  else
    log "ready callback to $TIERGATE_URL failed (the gateway will notice through its health check)"
  fi
}

main() {
  local id
  id="$(instance_id)" || { log "no INSTANCE_ID and the ECS metadata service did not answer"; exit 1; }
  start_server
  trap stop_server TERM INT
  log "instance $id: started the $TIERGATE_BACKEND server (pid $SERVER_PID, port $PORT), waiting for it to answer"
  if wait_until_answers; then
    notify_gateway "$id"
  fi
  # `wait` returns early when a trapped signal arrives: keep waiting until the server is gone,
  # so systemd sees this script exit only after the model server has shut down.
  local status=0
  while kill -0 "$SERVER_PID" 2>/dev/null; do
    wait "$SERVER_PID" || status=$?
  done
  exit "$status"
}

main "$@"
