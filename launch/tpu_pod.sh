#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: set up every worker, then run the same command on all of them.
#
#   launch/tpu_pod.sh setup TPU_NAME ZONE            # once per pod: clone or update, install
#   launch/tpu_pod.sh train TPU_NAME ZONE --config configs/imagenet256.py \
#       --workdir /mnt/shared/hybridflow/imagenet256 [--config.FIELD=VALUE ...]
#   launch/tpu_pod.sh stop TPU_NAME ZONE             # SIGTERM: every worker checkpoints and exits
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
set -euo pipefail

usage() {
  echo "usage: launch/tpu_pod.sh setup|train|stop TPU_NAME ZONE [hybridflow train flags...]" >&2
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

on_all_workers() {
  gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" "${PROJECT_FLAG[@]}" --worker=all \
      --command "$1"
}

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
    # One log per worker beside the checkout; the command's own output streams back through ssh.
    on_all_workers "cd $DIR && HYBRIDFLOW_DISTRIBUTED=auto .venv/bin/hybridflow train$args 2>&1 | tee -a train.log"
    ;;
  stop)
    # Only the trainer's Python processes ("/.../python .venv/bin/hybridflow train ..."): a bare
    # 'hybridflow train' pattern also matched the shell that runs this pkill (its command line
    # holds the pattern; it died with status 143) and the shell running `train`'s pipeline.
    on_all_workers "pkill -TERM -f '^[^ ]*python[0-9.]* [^ ]*hybridflow train( |\$)' || true"
    ;;
  *)
    usage
    ;;
esac
