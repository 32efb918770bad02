import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def hybridflow(*args, **kw):
  return subprocess.run([sys.executable, "-m", "hybridflow_jax.cli", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300, **kw)


def test_info_of_paper_scale_config_counts_without_allocating():
  r = hybridflow("info", "--config", "configs/imagenet256.py")
  assert r.returncode == 0, r.stderr
  lines = {l.split()[0]: l for l in r.stdout.splitlines() if l.strip()}
  for component in ("vq_encoder", "quantizer", "pixel_decoder", "continuous", "transformer",
                    "bridge"):
    assert component in lines
  # K x D codebook of the paper-scale config: 1024 x 256.
  assert lines["quantizer"].split()[-1] == f"{1024 * 256:,d}"
  total = int(next(l for l in r.stdout.splitlines() if "HybridFlow total" in l)
              .split()[-1].replace(",", ""))
  assert total > 100_000_000


def test_config_overrides_reach_the_model():
  r = hybridflow("info", "--config", "configs/tiny.py", "--config.model.vq.num_codes=128")
  assert r.returncode == 0, r.stderr
  quantizer = next(l for l in r.stdout.splitlines() if l.startswith("quantizer"))
  assert quantizer.split()[-1] == f"{128 * 16:,d}"


def test_user_errors_are_one_line_and_nonzero():
  cases = [("info", "--config", "configs/missing.py"), ("info",),
           ("info", "--config", "configs/tiny.py", "--config.stage=bogus"), ("bogus-command",)]
  for args in cases:
    r = hybridflow(*args)
    assert r.returncode != 0, args
    assert "Traceback" not in r.stderr, (args, r.stderr)
    assert "error" in r.stderr.lower() or "unknown command" in r.stderr, (args, r.stderr)
