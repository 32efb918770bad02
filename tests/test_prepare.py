"""`hybridflow prepare-data`: a folder of images -> TFDS array_record -> grain -> a training step,
with TensorFlow made unimportable in every subprocess."""

import json

from helpers import hybridflow, run_env, train
from PIL import Image

from hybridflow_jax.data import demo


def _no_tensorflow(tmp_path, cache):
  """An environment in which `import tensorflow` fails, installed or not."""
  blocker = tmp_path / "blocker" / "tensorflow"
  blocker.mkdir(parents=True)
  (blocker / "__init__.py").write_text("raise ImportError('TensorFlow is blocked in this test')\n")
  env = run_env(cache)
  env["PYTHONPATH"] = str(blocker.parent)
  return env


def test_folder_to_array_record_to_a_training_step_without_tensorflow(compile_cache, tmp_path):
  env = _no_tensorflow(tmp_path, compile_cache)
  train_dir, val_dir = tmp_path / "photos" / "train", tmp_path / "photos" / "val"
  (train_dir / "nested").mkdir(parents=True)
  val_dir.mkdir()
  paths = demo.write_folder(train_dir, "train")
  Image.open(paths[0]).save(train_dir / "nested" / "again.png")
  (train_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
  demo.write_folder(val_dir, "heldout")
  data_dir = tmp_path / "tfds"
  r = hybridflow("prepare-data", "folder", "--name", "my_photos", "--split", f"train={train_dir}",
                 "--split", f"validation={val_dir}", "--data-dir", data_dir, env=env)
  assert r.returncode == 0, r.stderr[-3000:]
  spec = f"tfds:my_photos/train@{data_dir}"
  assert f"--config.data.train={spec}" in r.stdout
  assert "left out (unreadable)" in r.stdout and "broken.jpg" in r.stdout
  info = json.loads((data_dir / "my_photos" / "1.0.0" / "dataset_info.json").read_text())
  counts = {s["name"]: int(s["shardLengths"][0]) for s in info["splits"]}
  assert counts == {"train": len(paths) + 1, "validation": 2}
  assert info["fileFormat"] == "array_record"

  run = tmp_path / "run"
  train(compile_cache, run, "stage=continuous", "train.eval_at_end=False",
        "train.steps.continuous=2", "train.crop_size.continuous=64", f"data.train={spec}",
        env=env)
  summary = json.loads((run / "continuous" / "summary.json").read_text())
  assert summary["history"][-1]["step"] == 2 and summary["skipped_images"] == []

  # Preparing into the same place again is refused, and nothing there changes.
  r = hybridflow("prepare-data", "folder", "--name", "my_photos", "--split", f"train={train_dir}",
                 "--data-dir", data_dir, env=env)
  assert r.returncode == 2 and "exists" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_tfds_builders_say_what_they_need(tmp_path, compile_cache):
  env = _no_tensorflow(tmp_path, compile_cache)
  r = hybridflow("prepare-data", "imagenet2012", "--data-dir", tmp_path, "--manual-dir", tmp_path,
                 env=env)
  assert r.returncode == 2 and "needs TensorFlow" in r.stderr and "[prepare]" in r.stderr
  r = hybridflow("prepare-data", "folder", "--name", "Bad-Name", "--split", f"train={tmp_path}",
                 "--data-dir", tmp_path, env=env)
  assert r.returncode == 2 and "TFDS name" in r.stderr
