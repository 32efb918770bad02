"""Models that ship with the package: a name or a path, to the API and the command line.

The package's pretrained/ directory is replaced by a temporary one; the model shipped there is the
untrained tiny bundle (`untrained_bundle`), so nothing here trains.
"""

import json
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

from hybridflow_jax import cli, pretrained
from hybridflow_jax.codec import bundle, container
from hybridflow_jax.codec.api import Codec
from hybridflow_jax.codec.bundle import BundleError


@pytest.fixture
def root(monkeypatch, tmp_path):
  """An empty stand-in for the package's pretrained/ directory: no model ships."""
  root = tmp_path / "pretrained"
  root.mkdir()
  monkeypatch.setattr(pretrained, "ROOT", root)
  return root


@pytest.fixture
def shipped(root, untrained_bundle):
  """The bundle shipped as `small` (pretrained.DEFAULT), next to directories that are not models."""
  out = root / pretrained.DEFAULT
  shutil.copytree(untrained_bundle, out)
  for name in ("Big-Model", "__pycache__"):  # not names, though they hold a manifest
    (root / name).mkdir()
    shutil.copy(out / "manifest.json", root / name)
  (root / "unfinished").mkdir()  # no manifest.json
  return out


@pytest.fixture
def photo(tmp_path):
  """A 32x48 PNG photo crop."""
  from skimage import data
  path = tmp_path / "photo.png"
  Image.fromarray(data.astronaut()[100:132, 200:248]).save(path)
  return path


def hybridflow(capsys, *args):
  """Runs `hybridflow ARGS` in this process (where the monkeypatches hold): (status, stdout,
  stderr lines)."""
  with pytest.raises(SystemExit) as e:
    cli.main([str(a) for a in args])
  out, err = capsys.readouterr()
  return e.value.code or 0, out, err.strip().splitlines()


def test_a_directory_is_its_own_model_even_when_a_name_matches(shipped, tmp_path, monkeypatch):
  assert pretrained.resolve(str(tmp_path)) == tmp_path
  assert pretrained.resolve(shipped) == shipped
  monkeypatch.chdir(tmp_path)
  (tmp_path / pretrained.DEFAULT).mkdir()
  assert pretrained.resolve(pretrained.DEFAULT) == pathlib.Path(pretrained.DEFAULT)


def test_a_shipped_name_resolves_to_its_bundle_and_loads(shipped):
  assert pretrained.available() == [pretrained.DEFAULT]
  assert pretrained.resolve(pretrained.DEFAULT) == shipped
  manifest = json.loads((shipped / "manifest.json").read_text())
  codec = Codec.load(pretrained.DEFAULT)
  assert codec.manifest == manifest


@pytest.mark.parametrize("model, why", [
    ("smal", "no such directory"),
    ("models/small", "no such directory"),
    ("Big-Model", "no such directory"),  # in pretrained/, but not a name
    ("unfinished", "no such directory"),  # in pretrained/, but no bundle
    ("photo.png", "not a directory"),
])
def test_an_unknown_name_or_missing_path_is_one_line_listing_the_shipped(
    shipped, photo, monkeypatch, capsys, model, why):
  monkeypatch.chdir(photo.parent)
  message = f"no model bundle at {model} ({why}, and no shipped model has that name; shipped: small)"
  with pytest.raises(BundleError) as e:
    Codec.load(model)
  assert str(e.value) == message
  status, _, err = hybridflow(capsys, "compress", photo, "out.hfc", "--model", model)
  assert status == 2 and err == [f"hybridflow compress: error: {message}"]
  assert not (photo.parent / "out.hfc").exists()


def test_when_no_model_ships_the_error_says_so(root, capsys, tmp_path):
  with pytest.raises(BundleError, match=r"^no model bundle at small \(no such directory, and no "
                     "model ships with this install yet; make one with hybridflow export\\)$"):
    pretrained.resolve("small")
  assert pretrained.available() == []
  status, _, err = hybridflow(capsys, "eval", "--model", "small", "--data", "x=demo", "--out",
                              tmp_path / "eval")
  assert status == 2 and len(err) == 1 and "no model ships with this install yet" in err[0]


@pytest.mark.parametrize("command", ["compress", "decompress"])
def test_without_model_and_no_shipped_default_the_error_says_pass_model(
    root, photo, tmp_path, capsys, command):
  out = tmp_path / ("a.hfc" if command == "compress" else "a.png")
  status, _, err = hybridflow(capsys, command, photo, out)
  assert status == 2 and err == [
      f"hybridflow {command}: error: no --model given, and the default model 'small' does not "
      "ship with this install; pass --model NAME|PATH (a bundle made with hybridflow export)"]
  assert not out.exists()


def test_compress_and_decompress_use_the_shipped_default_without_model(
    shipped, photo, tmp_path, capsys):
  hfc, png = tmp_path / "photo.hfc", tmp_path / "back.png"
  status, out, err = hybridflow(capsys, "compress", photo, hfc)
  assert status == 0, err
  assert json.loads(out)["bytes"] == hfc.stat().st_size
  # The file is the shipped model's: its fingerprint is in the header.
  fingerprint = json.loads((shipped / "manifest.json").read_text())["fingerprint"]
  container.unpack(hfc.read_bytes(),
                   expected_fingerprint=bytes.fromhex(fingerprint)[:container.FINGERPRINT_BYTES])
  status, out, err = hybridflow(capsys, "decompress", hfc, png)
  assert status == 0, err
  assert np.asarray(Image.open(png)).shape == (32, 48, 3)


def test_a_greyscale_photo_comes_back_greyscale(shipped, photo, tmp_path, capsys):
  grey, hfc, png = tmp_path / "grey.png", tmp_path / "grey.hfc", tmp_path / "back.png"
  Image.open(photo).convert("L").save(grey)
  status, out, err = hybridflow(capsys, "compress", grey, hfc)
  assert status == 0 and err == [], err  # no conversion note: it stays greyscale
  assert json.loads(out)["channels"] == 1
  assert container.unpack(hfc.read_bytes()).grey
  status, out, err = hybridflow(capsys, "decompress", hfc, png)
  assert status == 0 and json.loads(out)["channels"] == 1, err
  with Image.open(png) as back:
    assert back.mode == "L" and back.size == (48, 32)


def test_help_names_the_default_model(capsys):
  status, out, _ = hybridflow(capsys, "compress", "--help")
  assert status == 0 and "--model NAME|PATH" in out and "default: small" in " ".join(out.split())


def test_info_of_a_model_names_its_fingerprint_and_what_it_stores(shipped, capsys):
  status, out, err = hybridflow(capsys, "info", "--model", pretrained.DEFAULT)
  assert status == 0, err
  manifest = json.loads((shipped / "manifest.json").read_text())
  assert manifest["fingerprint"] in out and "HybridFlow total" in out
  # The bundle stores the networks that code and decode: G_vq and the light head stay behind.
  count = sum(x.size for x in bundle.flatten(bundle.read(shipped)["params"]).values())
  assert f"stores           {count:,d} parameters" in out
  status, _, err = hybridflow(capsys, "info", "--model", shipped, "--config.seed=3")
  assert status == 2 and err == ["hybridflow info: error: --config.seed=3: config overrides apply "
                                 "to --config, not to a model bundle"]
