"""MetricWriter (TensorBoard events and metrics.jsonl, read back without TF) and ProgressReporter."""

import io
import json
import math

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from hybridflow_jax.train import metrics


def _load_events(logdir) -> event_accumulator.EventAccumulator:
  # Size guidance 0 keeps every event: the default samples images and tensors down.
  kinds = (event_accumulator.SCALARS, event_accumulator.IMAGES, event_accumulator.TENSORS)
  guidance = {kind: 0 for kind in kinds}
  accumulator = event_accumulator.EventAccumulator(str(logdir), size_guidance=guidance)
  accumulator.Reload()
  return accumulator


def _read_jsonl(logdir) -> list[dict]:
  with open(logdir / metrics.JSONL_NAME, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_events_read_back(tmp_path):
  single = np.linspace(0.0, 1.0, 16 * 24 * 3, dtype=np.float32).reshape(16, 24, 3)
  batch = np.zeros((3, 8, 10, 3), np.uint8)
  batch[1] = 255
  with metrics.MetricWriter(tmp_path, enabled=True) as writer:
    writer.write_hparams({"model": {"width": 64}, "lr": 1e-3})
    writer.write_scalars(10, {"loss": 0.5, "psnr": jnp.float32(30.25)})
    writer.write_scalars(20, {"loss": np.array(0.25), "psnr": float("nan")})
    writer.write_images(20, {"recon": single, "batch": batch})
    writer.write_texts(20, {"note": "hello"})
  assert list(tmp_path.glob("events.out.tfevents.*"))

  events = _load_events(tmp_path)
  tags = events.Tags()
  assert set(tags["scalars"]) == {"loss", "psnr"}
  assert set(tags["images"]) == {"recon", "batch"}
  assert {"config", "note"} <= set(tags["tensors"])

  loss = events.Scalars("loss")
  assert [e.step for e in loss] == [10, 20]
  assert [e.value for e in loss] == [0.5, 0.25]
  psnr = events.Scalars("psnr")
  assert psnr[0].value == 30.25 and math.isnan(psnr[1].value)

  (recon,) = events.Images("recon")
  assert recon.step == 20 and (recon.height, recon.width) == (16, 24)
  decoded = np.asarray(Image.open(io.BytesIO(recon.encoded_image_string)))
  assert decoded.shape == (16, 24, 3)
  np.testing.assert_allclose(decoded, np.round(single * 255), atol=1)

  # A batch is one horizontal strip, its images left to right.
  (strip,) = events.Images("batch")
  decoded = np.asarray(Image.open(io.BytesIO(strip.encoded_image_string)))
  assert decoded.shape == (8, 30, 3)
  assert decoded[:, :10].max() == 0 and decoded[:, 10:20].min() == 255 and decoded[:, 20:].max() == 0

  (config,) = events.Tensors("config")
  assert config.step == 0
  text = tensor_util.make_ndarray(config.tensor_proto).item().decode()
  assert json.loads(text) == {"model": {"width": 64}, "lr": 1e-3}
  (note,) = events.Tensors("note")
  assert tensor_util.make_ndarray(note.tensor_proto).item() == b"hello"


def test_jsonl_values_and_nan(tmp_path):
  with metrics.MetricWriter(tmp_path, enabled=True) as writer:
    writer.write_scalars(1, {"loss": 2.0, "rate": jnp.array([0.125])})
    writer.write_scalars(2, {"loss": float("nan"), "rate": np.float32(np.inf)})
    with pytest.raises(ValueError, match="reserved"):
      writer.write_scalars(3, {"step": 1.0})
  # Strict parsing: NaN/Infinity tokens would be rejected, so null must be what was written.
  reject = lambda token: pytest.fail(f"non-JSON constant {token}")
  with open(tmp_path / metrics.JSONL_NAME, encoding="utf-8") as f:
    lines = [json.loads(line, parse_constant=reject) for line in f]
  assert [line["step"] for line in lines] == [1, 2]
  assert lines[0]["loss"] == 2.0 and lines[0]["rate"] == 0.125
  assert lines[1]["loss"] is None and lines[1]["rate"] is None
  assert all(isinstance(line["time"], float) for line in lines)


def test_disabled_writer_creates_nothing(tmp_path):
  logdir = tmp_path / "run"
  writer = metrics.MetricWriter(logdir, enabled=False)
  writer.write_hparams({"a": 1})
  writer.write_scalars(1, {"loss": 1.0})
  writer.write_images(1, {"x": np.zeros((4, 4, 3), np.uint8)})
  writer.write_texts(1, {"t": "x"})
  writer.flush()
  writer.close()
  assert not logdir.exists()


def test_resume_appends_jsonl(tmp_path):
  with metrics.MetricWriter(tmp_path, enabled=True) as writer:
    writer.write_scalars(1, {"loss": 1.0})
    writer.write_scalars(2, {"loss": 0.5})
  with metrics.MetricWriter(tmp_path, enabled=True) as writer:
    writer.write_scalars(3, {"loss": 0.25})
  lines = _read_jsonl(tmp_path)
  assert [(line["step"], line["loss"]) for line in lines] == [(1, 1.0), (2, 0.5), (3, 0.25)]
  # Each writer adds its own event file; TensorBoard reads them in sequence.
  assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
  assert [e.step for e in _load_events(tmp_path).Scalars("loss")] == [1, 2, 3]


class FakeClock:
  def __init__(self, now: float = 0.0):
    self.now = now

  def __call__(self) -> float:
    return self.now


def test_progress_reporter():
  clock = FakeClock()
  reporter = metrics.ProgressReporter(total_steps=311, start_step=0, clock=clock)
  assert math.isnan(reporter.report()["steps_per_sec"])

  # The first step takes 30 s (compilation) and is left out; then 10 steps of 8 images, 0.5 s each.
  clock.now = 30.0
  reporter.update(1, 8)
  for step in range(2, 12):
    clock.now += 0.5
    reporter.update(step, 8)
  report = reporter.report()
  assert report["steps_per_sec"] == pytest.approx(2.0)
  assert report["images_per_sec"] == pytest.approx(16.0)
  assert report["eta_seconds"] == pytest.approx(150.0)  # 300 steps left at 2 steps/s
  assert report["progress"] == pytest.approx(11 / 311)

  # The next window only covers what happened since the last report: 4 steps of 8 images in 1 s.
  for step in range(12, 16):
    clock.now += 0.25
    reporter.update(step, 8)
  line = reporter.format(15, {"loss": 0.123456, "psnr": jnp.float32(31.5)})
  assert line == "step 15/311 (4%)  loss 0.1235  psnr 31.5  4.0 steps/s  32.0 img/s  ETA 1m14s"

  # No progress since the last report: the previous rates are repeated rather than lost.
  assert reporter.report()["steps_per_sec"] == pytest.approx(4.0)


def test_progress_reporter_without_skip_first():
  clock = FakeClock(100.0)
  reporter = metrics.ProgressReporter(total_steps=20, start_step=10, skip_first=False, clock=clock)
  clock.now = 104.0
  reporter.update(12, 64)
  report = reporter.report()
  assert report["steps_per_sec"] == pytest.approx(0.5)
  assert report["images_per_sec"] == pytest.approx(16.0)
  assert report["eta_seconds"] == pytest.approx(16.0)
  assert report["progress"] == pytest.approx(0.6)
  clock.now = 4000.0
  reporter.update(20, 64)
  assert reporter.format(20, {}).endswith("ETA 0m00s")
  assert "0.0021 steps/s" in reporter.format(20, {})
