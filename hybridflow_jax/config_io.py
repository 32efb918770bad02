"""Loading `get_config()` files by path, with command-line overrides of any field.

    hybridflow train --config configs/tiny.py --config.train.steps.vq=100 --config.stage vq

An override names an existing field (a typo is an error, not a new field) and its value is parsed by
the field's type, as ml_collections' `config_flags` parses it: ints, floats, bools (`true`, `0`, ...;
a bare `--config.FIELD` is true, `--noconfig.FIELD` false), tuples (`"(1, 2)"`, or the flag
repeated: `--config.t=1 --config.t=2`) and strings (taken as written).
"""

from __future__ import annotations

import importlib.util
import pathlib
from collections.abc import Sequence

import ml_collections
from absl import flags
from ml_collections.config_flags import config_path, tuple_parser

from hybridflow_jax.config import validate
from hybridflow_jax.errors import UserError

PREFIX = "--config."
NEGATED_PREFIX = "--noconfig."
# absl's own parsers, so values mean what they meant under config_flags.
_PARSERS = {int: flags.IntegerParser(), float: flags.FloatParser(), bool: flags.BooleanParser(),
            str: flags.ArgumentParser(), tuple: tuple_parser.TupleParser()}


def load_config(path: str | pathlib.Path, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Runs `get_config()` of the Python file at `path`, applies `overrides` and validates.

  overrides: command-line words, e.g. ["--config.stage=vq", "--config.seed", "3"]. Raises
  UserError (one line) for a file that cannot be loaded, a bad override or an invalid config.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise UserError(f"cannot load --config {path}: no such file")
  try:
    spec = importlib.util.spec_from_file_location(f"hybridflow_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
  except Exception as e:  # noqa: BLE001  (whatever a config file raises, the user must fix it)
    raise UserError(f"cannot load --config {path}: {type(e).__name__}: {e}") from None
  apply_overrides(config, overrides)
  return validated(config)


def validated(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` if it is valid; UserError naming the bad key if not."""
  try:
    validate(config)
  except ValueError as e:
    raise UserError(str(e)) from None
  return config


def apply_overrides(config: ml_collections.ConfigDict, words: Sequence[str]) -> None:
  """Sets the fields that command-line `words` override, in order (the last one wins)."""
  values = {}  # field path -> parsed value; tuples collect every occurrence
  words = list(words)
  while words:
    word = words.pop(0)
    negated = word.startswith(NEGATED_PREFIX)
    if not (negated or word.startswith(PREFIX)):
      raise UserError(f"unrecognized argument {word!r} (fields are set with {PREFIX}FIELD=VALUE)")
    field, has_value, text = word.removeprefix(NEGATED_PREFIX if negated else PREFIX).partition("=")
    kind = _field_type(config, field)
    if negated and (kind is not bool or has_value):
      raise UserError(f"{word}: only a bare boolean field can be negated")
    if kind is bool and not has_value:  # a bare boolean flag, as absl reads it
      text, has_value = ("false" if negated else "true"), True
    if not has_value:
      if not words:
        raise UserError(f"{word}: needs a value")
      text = words.pop(0)
    try:
      value = _PARSERS[kind].parse(text)
    except ValueError as e:  # absl's message is the first argument (its boolean parser adds more)
      raise UserError(f"{PREFIX}{field}={text}: {str(e.args[0]).splitlines()[0]}") from None
    values[field] = values.get(field, ()) + value if kind is tuple else value
  for field, value in values.items():
    config_path.set_value(field, config, value)


def _field_type(config: ml_collections.ConfigDict, field: str) -> type:
  try:
    kind = config_path.get_type(field, config)
  except (AttributeError, KeyError):
    raise UserError(f"{PREFIX}{field}: the config has no such field") from None
  if kind not in _PARSERS:
    raise UserError(f"{PREFIX}{field}: cannot be set from the command line (a {kind.__name__}; "
                    "set the fields inside it)")
  return kind
