"""Shared fixtures: the tiny config, its model and one set of params for the whole session
(jit compilation dominates the cost of small tests, so everything compiled is shared).

Tests compile with jax's `jax_disable_most_optimizations` (XLA:CPU's LLVM passes at -O0): on 2
cores XLA compiles the tiny training pipeline in 78 s instead of 166 s, and `make test` takes about
a third less time. The shipped model's files of the held-out photos came out byte-identical, their
decoded pixels differ in float rounding. Tests that check what users get (the shipped model's
recorded figures) compile as users do (`as_users_compile`); `JAX_DISABLE_MOST_OPTIMIZATIONS=0 make
test` runs every test that way.

Every process of a run (both pytest-xdist workers and every subprocess) shares one persistent
compilation cache (`compile_cache`), so a program two of them need compiles once.
"""

import contextlib
import os
import pathlib

# Before jax reads it; subprocesses (training runs, the command line) inherit it.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # noqa: E402
import pytest  # noqa: E402
from helpers import CACHE_MAX_BYTES  # noqa: E402

from hybridflow_jax import config_io  # noqa: E402
from hybridflow_jax.models import hybridflow as hf  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The commands keep compiled programs in ~/.cache unless told otherwise: no test writes there
# (subprocesses that share the session's cache set JAX_COMPILATION_CACHE_DIR, which wins).
os.environ["HYBRIDFLOW_COMPILE_CACHE"] = "off"


@contextlib.contextmanager
def users_compilation():
  """Programs compiled inside compile with XLA's usual optimisations, as outside the tests."""
  before = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", False)
  try:
    yield
  finally:
    jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture(scope="module")
def as_users_compile():
  """A module's tests (and module fixtures set up after this one) compile as users' programs do."""
  with users_compilation():
    yield


def _run_dir(tmp_path_factory):
  """The test run's temporary folder: under pytest-xdist, the one that holds every worker's."""
  base = tmp_path_factory.getbasetemp()
  return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory):
  """One persistent compilation cache for the whole run: every worker process of pytest-xdist and
  every subprocess, so a program that two of them need compiles once. Bounded in size, which makes
  jax lock the folder around each read and write (workers use it at the same time)."""
  cache = _run_dir(tmp_path_factory) / "jax_cache"
  cache.mkdir(exist_ok=True)
  return str(cache)


@pytest.fixture(scope="session", autouse=True)
def _shared_compilation(compile_cache):
  """Programs the tests compile in their own process go to the same cache (those that took over
  jax's default second to compile)."""
  jax.config.update("jax_compilation_cache_dir", compile_cache)
  jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
  yield


@pytest.fixture(scope="session")
def tiny_run(compile_cache, tmp_path_factory):
  """A finished tiny training pipeline (TINY_PIPELINE): (workdir, CompletedProcess)."""
  from helpers import TINY_PIPELINE, train
  workdir = tmp_path_factory.mktemp("tiny_run")
  return workdir, train(compile_cache, workdir, *TINY_PIPELINE)


@pytest.fixture(scope="session")
def bundle_dir(tiny_run, compile_cache, tmp_path_factory):
  """The tiny run exported with the command line: (bundle directory, CompletedProcess)."""
  from helpers import PRIOR_IMAGES, hybridflow, run_env
  workdir, _ = tiny_run
  out = tmp_path_factory.mktemp("bundle") / "tiny"
  r = hybridflow("export", "--workdir", workdir, "--out", out, "--prior-images", PRIOR_IMAGES,
                 env=run_env(compile_cache))
  assert r.returncode == 0, r.stderr[-3000:]
  return out, r


@pytest.fixture(scope="session")
def codec(bundle_dir):
  """The tiny trained model's bundle, loaded."""
  from hybridflow_jax.codec.api import Codec
  return Codec.load(bundle_dir[0])


CROP = (256, 384)  # every demo photo is at least 300 x 451


@pytest.fixture(scope="session")
def photos():
  """The ten demo photos, center crops of CROP (one shape: one compilation)."""
  from hybridflow_jax.data import demo
  out = {}
  for name, img in demo.load("all").items():
    top, left = (img.shape[0] - CROP[0]) // 2, (img.shape[1] - CROP[1]) // 2
    out[name] = img[top:top + CROP[0], left:left + CROP[1]]
  return out


@pytest.fixture(scope="session")
def untrained_bundle(tiny_config, tiny_params, tmp_path_factory):
  """The untrained tiny params exported as a bundle (no training): a second model, cheaply."""
  from hybridflow_jax.train import export
  out = tmp_path_factory.mktemp("untrained") / "untrained"
  export.export_params(tiny_config, tiny_params, out, prior_images=1, log=lambda _: None)
  return out


@pytest.fixture(scope="session")
def tiny_config():
  return config_io.load_config(ROOT / "configs" / "tiny.py")


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
  return hf.build_model(tiny_config)


@pytest.fixture(scope="session")
def tiny_params(tiny_model):
  return hf.init_params(tiny_model, jax.random.PRNGKey(0))


@pytest.fixture(scope="session")
def images():
  """[2, 64, 64, 3] crops of two real photographs, float32 in [0, 1]."""
  import numpy as np
  from skimage import data
  crops = [data.astronaut()[100:164, 200:264], data.coffee()[150:214, 300:364]]
  return jax.numpy.asarray(np.stack(crops).astype(np.float32) / 255.0)


# Modules whose tests run training processes of their own (the launcher test alone takes about a
# minute and a half): scheduled first, so that the two workers end on short tests together rather
# than one of them starting such a test when the other is nearly done.
FIRST = ("test_train.py",)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
  """Under pytest-xdist (`make test` runs `-n 2 --dist loadgroup`): every test that needs the tiny
  training run goes to the same worker, so the run is trained once, not once per worker; the
  long-running modules of FIRST are scheduled first."""
  for item in items:
    if "tiny_run" in getattr(item, "fixturenames", ()):
      item.add_marker(pytest.mark.xdist_group("tiny_run"))
  items.sort(key=lambda item: item.path.name not in FIRST)  # stable: the order is kept otherwise
