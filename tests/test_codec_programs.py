"""The codec's exported programs kept on disk (`codec/programs.py`): a later process reads them
back instead of tracing the networks again, and decodes the same pixels."""

import jax.numpy as jnp
import numpy as np

from hybridflow_jax.codec import programs as programs_lib
from hybridflow_jax.codec.api import Codec
from hybridflow_jax.codec.programs import Programs
from hybridflow_jax.data import demo


def _sin_plus(x, y):
  return jnp.sin(x) + y


def test_a_stored_program_is_read_back_not_traced(tmp_path):
  x, y = np.linspace(0, 3, 12, dtype=np.float32).reshape(3, 4), np.float32(0.5)
  first = Programs("model-a", tmp_path)
  want = np.asarray(first.call("f", _sin_plus, x, y))
  assert first.traced == 1 and len(list(tmp_path.glob("*.jaxexport"))) == 1
  first.call("f", _sin_plus, x, y)  # the same process: its own program
  assert first.traced == 1

  later = Programs("model-a", tmp_path)
  np.testing.assert_array_equal(np.asarray(later.call("f", _sin_plus, x, y)), want)
  assert later.traced == 0
  # Another shape, another model or another network is another program.
  later.call("f", _sin_plus, x[:2], y)
  Programs("model-b", tmp_path).call("f", _sin_plus, x, y)
  Programs("model-a", tmp_path).call("g", _sin_plus, x, y)
  assert len(list(tmp_path.glob("*.jaxexport"))) == 4


def test_a_damaged_program_is_traced_again_and_replaced(tmp_path):
  x = np.ones((2, 2), np.float32)
  Programs("m", tmp_path).call("f", _sin_plus, x, x)
  (path,) = tmp_path.glob("*.jaxexport")
  path.write_bytes(b"not a program")
  again = Programs("m", tmp_path)
  np.testing.assert_allclose(np.asarray(again.call("f", _sin_plus, x, x)), np.sin(1.0) + 1.0,
                             rtol=1e-6)
  assert again.traced == 1 and path.read_bytes() != b"not a program"
  assert Programs("m", tmp_path).call("f", _sin_plus, x, x) is not None


def test_the_folder_keeps_the_most_recently_used_programs_within_its_size(tmp_path):
  p = Programs("m", tmp_path)
  p.call("f", _sin_plus, np.ones(1, np.float32), np.float32(0))
  size = next(tmp_path.glob("*.jaxexport")).stat().st_size
  small = Programs("m", tmp_path, max_bytes=int(2.5 * size))
  for n in range(2, 6):
    small.call("f", _sin_plus, np.ones(n, np.float32), np.float32(0))
  assert len(list(tmp_path.glob("*.jaxexport"))) == 2
  assert not list(tmp_path.glob("*.tmp"))


def test_an_unwritable_folder_only_costs_the_tracing(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  p = Programs("m", blocker / "programs")  # its parent is a file: cannot be created
  assert np.asarray(p.call("f", _sin_plus, np.zeros(2, np.float32), np.float32(1))).tolist() == \
      [1.0, 1.0]


def test_the_command_line_keeps_programs_beside_the_compile_cache():
  assert programs_lib.default_dir({}) is None
  assert programs_lib.default_dir({"JAX_COMPILATION_CACHE_DIR": "/c/jax"}) == "/c/jax/exported"


def test_a_later_codec_decodes_from_the_stored_programs_the_same_pixels(tmp_path):
  rgb = demo.load("heldout")["flower"][:48, :64]
  first = Codec.load("small", program_cache=tmp_path)
  data = first.compress(rgb, "1_4")
  image = first.decompress(data)
  assert first.networks.programs.traced == 2  # the sender's and the receiver's networks

  later = Codec.load("small", program_cache=tmp_path)
  assert later.compress(rgb, "1_4") == data
  np.testing.assert_array_equal(later.decompress(data), image)
  assert later.networks.programs.traced == 0
