"""`hybridflow plan`: ahead-of-time compilation of the real update step for N (fake) devices."""

import json

from helpers import ROOT, hybridflow, run_env


def _plan(cache, tmp_path, devices, *extra):
  out = tmp_path / f"plan{devices}.json"
  r = hybridflow("plan", "--config", ROOT / "configs" / "imagenet256.py", "--devices", devices,
                 "--stage", "continuous", "--fsdp", -1, "--json", out, *extra,
                 env=run_env(cache), timeout=900)
  return r, (json.loads(out.read_text()) if out.exists() else None)


def test_plan_imagenet256_on_8_and_64_devices(compile_cache, tmp_path):
  r8, (p8,) = _plan(compile_cache, tmp_path, 8, "--hbm-gib", "16")
  assert r8.returncode == 0 and "yes" in r8.stdout, r8.stderr[-3000:]
  # A budget no device meets: the plan is still written, and the exit status says it does not fit.
  r64, (p64,) = _plan(compile_cache, tmp_path, 64, "--hbm-gib", "0.001")
  assert r64.returncode == 1 and "NO" in r64.stdout, r64.stderr[-3000:]
  for r, p, n in ((r8, p8, 8), (r64, p64, 64)):
    assert p["devices"] == n and p["mesh"] == {"data": 1, "fsdp": n}
    assert p["params"] > 100e6 and p["flops_per_device"] > 0 and p["memory_per_device"] > 0
    assert "continuous" in r.stdout
  # FSDP: each device holds a shard of the params and optimiser state, so 8x the devices holds less.
  assert p64["state_bytes_per_device"] < 0.25 * p8["state_bytes_per_device"]
  assert p64["argument_bytes"] < p8["argument_bytes"]
  # The same global batch split 8x finer: less work per device.
  assert p64["flops_per_device"] < 0.5 * p8["flops_per_device"]


def test_plan_refuses_bad_meshes(compile_cache, tmp_path):
  r, _ = _plan(compile_cache, tmp_path, 6)
  assert r.returncode == 2 and "batch size 256" in r.stderr
  assert len(r.stderr.strip().splitlines()) == 1
  # Config overrides apply as in `train`: the batch they set is the one checked.
  r, _ = _plan(compile_cache, tmp_path, 8, "--config.train.batch_size=250")
  assert r.returncode == 2 and "batch size 250 does not divide" in r.stderr, r.stderr[-3000:]
