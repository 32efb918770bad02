#!/usr/bin/env bash
# N training processes on this host, joined by jax.distributed over localhost (the path the tests
# take; also how to use several GPUs of one machine as one process each).
#
#   launch/local.sh N --config configs/tiny.py --workdir runs/local [--config.FIELD=VALUE ...]
#
# Every argument after N goes to `hybridflow train`. Output lines are prefixed [p0], [p1], ...
# Ctrl-C or SIGTERM to this script reaches every process: each checkpoints and exits 0, and running
# the same command again resumes; the script returns when they have. (The prefixing seds ignore
# Ctrl-C, which a terminal sends them too: the processes' last lines still show.) If one process
# fails, the others are stopped.
#
# Environment:
#   PORT                  coordinator port on 127.0.0.1 (default: a free one)
#   DEVICES_PER_PROCESS   CPU only: devices each process simulates (XLA host platform; default 1)
#   PYTHON                the interpreter with hybridflow-jax installed (default: the repo's .venv,
#                         else python3)
set -euo pipefail

if [[ $# -lt 1 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: launch/local.sh N --config CONFIG --workdir DIR [flags...]  (N >= 1 processes)" >&2
  exit 2
fi
N=$1
shift
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
PORT="${PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
if [[ -n "${DEVICES_PER_PROCESS:-}" ]]; then
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${DEVICES_PER_PROCESS}"
fi

pids=()
stop() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
}
trap 'stop' TERM INT

for ((i = 0; i < N; i++)); do
  "$PYTHON" -m hybridflow_jax.cli train "$@" \
      --coordinator_address="127.0.0.1:${PORT}" --num_processes="$N" --process_id="$i" \
      > >(trap '' INT HUP; exec sed -u "s/^/[p$i] /") \
      2> >(trap '' INT HUP; exec sed -u "s/^/[p$i] /" >&2) &
  pids+=($!)
done

# Poll (bash reaps finished children itself; `wait PID` then gives each one's status).
status=0
declare -A finished=()
while :; do
  alive=0
  for idx in "${!pids[@]}"; do
    [[ -n "${finished[$idx]:-}" ]] && continue
    pid=${pids[$idx]}
    if kill -0 "$pid" 2>/dev/null; then alive=1; continue; fi
    set +e; wait "$pid"; rc=$?; set -e
    finished[$idx]=1
    if ((rc != 0 && status == 0)); then
      status=$rc
      echo "launch/local.sh: process $idx exited with status $rc; stopping the others" >&2
      stop
    fi
  done
  ((alive)) || break
  sleep 1 || :  # Ctrl-C in a terminal kills the sleep too; the processes are still stopping
done
exit "$status"
