#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: set up every worker, then run the same command on all of them.
#
#   launch/tpu_pod.sh setup TPU_NAME ZONE            # once per pod: clone or update, install
#   launch/tpu_pod.sh train TPU_NAME ZONE --config configs/imagenet256.py \
#       --workdir /mnt/shared/hybridflow/imagenet256 [--config.FIELD=VALUE ...]
#   launch/tpu_pod.sh logs TPU_NAME ZONE             # follow worker 0's log (Ctrl-C stops following)
#   launch/tpu_pod.sh status TPU_NAME ZONE           # is a trainer running on each worker?
#   launch/tpu_pod.sh stop TPU_NAME ZONE             # SIGTERM: every worker checkpoints and exits
#
# `train` starts the trainers detached (each in its own session, output appended to train.log in
# the checkout) and returns: a dropped ssh connection or a closed laptop leaves them training. It
# refuses a worker where this checkout's trainer already runs (two would write one work directory).
#
# The work directory is a local path that every worker sees with the same contents: a Filestore
# (NFS) share, or a bucket mounted at the same path on every worker with Cloud Storage FUSE; this
# script mounts nothing. hybridflow refuses gs:// URLs (it writes with local file operations).
#
# `train` is safe to rerun after a preemption or `stop`: each stage resumes from its last
# checkpoint. jax.distributed finds the other workers by itself on Cloud TPU (HYBRIDFLOW_DISTRIBUTED
# =auto makes `hybridflow train` call jax.distributed.initialize() with no arguments).
#
# Environment:
#   PROJECT   gcloud project (default: gcloud's configured one)
#   REPO      git URL to clone on the workers (default: this checkout's origin)
#   REF       branch, tag or commit to check out (default: this checkout's HEAD commit)
#   DIR       checkout directory on the workers (default: ~/hybridflow-jax)
#   JAX_SPEC  the jax install for TPUs (default: "jax[tpu]", resolved against the pinned range)
#   WORKER    the worker `logs` follows (default 0, the one that logs for the run)
set -euo pipefail

usage() {
  echo "usage: launch/tpu_pod.sh setup|train|logs|status|stop TPU_NAME ZONE [hybridflow train flags...]" >&2
  exit 2
}
[[ $# -ge 3 ]] || usage
ACTION=$1 TPU=$2 ZONE=$3
shift 3
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO="${REPO:-$(git -C "$HERE" remote get-url origin 2>/dev/null || true)}"
REF="${REF:-$(git -C "$HERE" rev-parse HEAD 2>/dev/null || echo main)}"
DIR="${DIR:-\$HOME/hybridflow-jax}"
JAX_SPEC="${JAX_SPEC:-jax[tpu]}"
PROJECT_FLAG=()
[[ -n "${PROJECT:-}" ]] && PROJECT_FLAG=(--project "$PROJECT")

on_workers() {  # on_workers WORKERS COMMAND
  gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" "${PROJECT_FLAG[@]}" --worker="$1" \
      --command "$2"
}
on_all_workers() { on_workers all "$1"; }

# Run first on a worker: into the checkout, and the pattern of its trainers' command lines
# ("/.../python $DIR/.venv/bin/hybridflow train ...", as `train` starts them) for pgrep and pkill.
# It matches neither the shells that run these commands (their command lines hold the pattern:
# a bare "hybridflow train" made `stop`'s pkill kill its own shell, status 143) nor another
# checkout's trainers.
IN_CHECKOUT="cd $DIR || exit 1; trainer=\"^[^ ]*python[0-9.]* \$PWD/.venv/bin/hybridflow train( |\\\$)\""

case "$ACTION" in
  setup)
    [[ -n "$REPO" ]] || { echo "launch/tpu_pod.sh: set REPO (no git origin here)" >&2; exit 2; }
    on_all_workers "set -e
      if [ -d $DIR/.git ]; then git -C $DIR fetch -q origin; else git clone -q '$REPO' $DIR; fi
      git -C $DIR checkout -q '$REF'
      cd $DIR && python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip
      .venv/bin/pip install -q -e . '$JAX_SPEC'
      .venv/bin/python -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.devices()[0].device_kind)'"
    ;;
  train)
    [[ $# -gt 0 ]] || usage
    args=$(printf " %q" "$@")
    # setsid --fork: a new session whatever the shell's process groups; the shell in between
    # records the trainer's pid and becomes it. A trainer that ends within 5 s (a bad flag, a
    # missing file) fails the launch with its log's last lines.
    on_all_workers "$IN_CHECKOUT
      if pgrep -f \"\$trainer\" > /dev/null; then
        echo \"\$(hostname): a trainer is already running here (launch/tpu_pod.sh stop first)\" >&2
        exit 1
      fi
      rm -f train.pid
      HYBRIDFLOW_DISTRIBUTED=auto setsid --fork bash -c 'echo \$\$ > train.pid; exec \"\$@\"' - \\
          \"\$PWD/.venv/bin/hybridflow\" train$args >> train.log 2>&1 < /dev/null
      for _ in \$(seq 100); do [ -s train.pid ] && break; sleep 0.1; done
      pid=\$(cat train.pid)
      for _ in \$(seq 10); do
        case \$(ps -o stat= -p \"\$pid\" 2>/dev/null) in
          ''|Z*) echo \"\$(hostname): the trainer ended at once; the end of \$PWD/train.log:\" >&2
                 tail -n 5 train.log >&2; exit 1 ;;
        esac
        sleep 0.5
      done
      echo \"\$(hostname): training (pid \$pid), log \$PWD/train.log\""
    echo "follow it: launch/tpu_pod.sh logs $TPU $ZONE; stop it: launch/tpu_pod.sh stop $TPU $ZONE"
    ;;
  logs)
    on_workers "${WORKER:-0}" "$IN_CHECKOUT; tail -n 40 -F train.log"
    ;;
  status)
    on_all_workers "$IN_CHECKOUT
      if found=\$(pgrep -af \"\$trainer\"); then echo \"\$found\" | sed \"s/^/\$(hostname): /\"
      else echo \"\$(hostname): no trainer running\"; fi"
    ;;
  stop)
    # Returns once every worker's trainer has written its checkpoint and exited (at most 10 min).
    on_all_workers "$IN_CHECKOUT
      if ! pkill -TERM -f \"\$trainer\"; then echo \"\$(hostname): no trainer running\"; exit 0; fi
      for _ in \$(seq 600); do pgrep -f \"\$trainer\" > /dev/null || break; sleep 1; done
      if pgrep -f \"\$trainer\" > /dev/null; then
        echo \"\$(hostname): the trainer is still running 600 s after SIGTERM (see train.log)\" >&2
        exit 1
      fi
      echo \"\$(hostname): stopped\""
    ;;
  *)
    usage
    ;;
esac
