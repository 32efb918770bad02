"""Every `hybridflow` command the docs show is one the command line accepts.

The README, docs/ and the config files' and launchers' comments are where users copy commands from.
A command there is a line of a fenced code block, docstring or comment that starts with
`hybridflow`, continued over trailing backslashes, or a launcher's line, whose
words after `launch/local.sh N`, `launch/tpu_pod.sh train TPU ZONE` or `launch/slurm.sbatch` go to
`hybridflow train`. Each is parsed by the real parser and, for train, info and plan, its config file
is loaded with its `--config.FIELD=VALUE` overrides and validated, without running anything. The
commands quoted in the Markdown prose (`hybridflow train --config ...` inside backticks, often only
the flags that matter) and the lines cut short by a `...` must name flags their command has and
overrides their config accepts. A flag
renamed, a field moved or a path the parser refuses (a `gs://` work directory, refused since
2026-12-02, stayed in configs/imagenet256.py's docstring until 2026-12-03) fails here instead of
on a user's pod.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import shlex

import pytest

from hybridflow_jax import cli, config_io
from hybridflow_jax.errors import UserError

ROOT = pathlib.Path(__file__).resolve().parents[1]
MARKDOWN = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CODE = [*sorted((ROOT / "configs").glob("*.py")), *sorted((ROOT / "launch").glob("*"))]
# The words each launcher takes before those it passes to `hybridflow train`.
LAUNCHERS = {"launch/local.sh": 1, "launch/tpu_pod.sh train": 2, "launch/slurm.sbatch": 0}
COMMAND = re.compile(r"([A-Z_]+=\S*\s+)*(hybridflow\s|launch/|sbatch\s)")
PLACEHOLDER = re.compile(r"\[--config\.FIELD=VALUE \.\.\.\]|\[flags\.\.\.\]")
QUOTED = re.compile(r"`((?:[A-Z_]+=\S+\s+)*hybridflow\s+[a-z][^`]*)`")


def _copyable_lines(path: pathlib.Path) -> list[str]:
  """Fenced code blocks of Markdown; every line of code, comment markers dropped."""
  text = path.read_text()
  if path.suffix == ".md":
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    return [line for block in blocks for line in block.splitlines()]
  return [re.sub(r"^\s*#", "", line) for line in text.splitlines()]


def _words(line: str) -> tuple[list[str], bool] | None:
  """(the words after `hybridflow` of a command line (a launcher's: `train` and what it passes),
  whether the line is whole: not cut at a `...`); None if the line is no command."""
  line = PLACEHOLDER.sub("", line.split(" # ")[0].split("  #")[0]).strip()
  if not COMMAND.match(line):
    return None
  words = shlex.split(line)
  cut = next((k for k, w in enumerate(words) if "..." in w), len(words))
  if cut < len(words) and words[cut - 1].startswith("--"):
    return None  # `--config ... --workdir ...`: a pattern, not a command
  whole = cut == len(words)
  words = words[:cut]
  while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # WORKDIR=... hybridflow ...
    words.pop(0)
  if words[:1] == ["hybridflow"] and len(words) > 1:
    return words[1:], whole
  for launcher, skip in LAUNCHERS.items():
    head = launcher.split()
    at = next((k for k, w in enumerate(words) if w == head[0]), None)
    if at is not None and words[at:at + len(head)] == head and "--config" in words:
      return ["train", *words[at + len(head) + skip:]], whole
  return None


def _commands() -> tuple[list, list]:
  """(whole commands, commands cut at a `...`) of the copyable lines."""
  whole, cut = [], []
  for path in MARKDOWN + CODE:
    if not path.is_file():
      continue
    lines, i = _copyable_lines(path), 0
    while i < len(lines):
      line = lines[i].strip()
      while line.endswith("\\") and i + 1 < len(lines):
        i += 1
        line = line[:-1] + " " + re.sub(r"^\s*#", "", lines[i]).strip()
      i += 1
      command = _words(line)
      if command:
        words, is_whole = command
        (whole if is_whole else cut).append(
            pytest.param(words, id=f"{path.relative_to(ROOT)}: {' '.join(words)}"[:100]))
  return whole, cut


def _quoted() -> list:
  """Commands quoted in Markdown prose that name at least one flag."""
  found = []
  for path in MARKDOWN:
    for text in QUOTED.findall(path.read_text()):
      words = shlex.split(" ".join(text.replace("NAME|PATH", "NAME").split()))
      words = [w for w in words if "..." not in w]
      words = words[next(k for k, w in enumerate(words) if w == "hybridflow") + 1:]
      if any(w.startswith("--") for w in words):
        found.append(pytest.param(words, id=f"{path.relative_to(ROOT)}: {' '.join(words)}"[:100]))
  return found


COMMANDS, CUT_COMMANDS = _commands()
QUOTED_COMMANDS = _quoted() + CUT_COMMANDS


def _config(words: list[str], overrides: list[str]) -> None:
  """Loads and validates the --config a train/info/plan command names, with its overrides."""
  if "--config" in words:
    path = words[words.index("--config") + 1]
    try:
      config_io.load_config(ROOT / path, overrides)
    except UserError as e:
      pytest.fail(f"hybridflow {' '.join(words)}: {e}")


def test_the_docs_show_every_command():
  shown = {p.values[0][0] for p in COMMANDS}
  assert {"train", "eval", "ablate", "export", "compress", "decompress", "info", "plan",
          "prepare-data"} <= shown, shown
  assert len(QUOTED_COMMANDS) >= 20


@pytest.mark.parametrize("words", COMMANDS)
def test_a_documented_command_parses_and_its_config_loads(words, monkeypatch):
  failures = []

  def fail(prog, message):
    failures.append(message)
    raise SystemExit(2)

  monkeypatch.setattr(cli, "fail", fail)
  try:
    ns, extra = cli.build_parser().parse_known_args(words)
  except SystemExit:
    pytest.fail(f"hybridflow {' '.join(words)}: {failures[-1] if failures else 'refused'}")
  if ns.command in cli.CONFIG_COMMANDS:
    _config(words, extra)
  else:
    assert not extra, f"hybridflow {' '.join(words)}: unrecognized arguments {extra}"


@pytest.mark.parametrize("words", QUOTED_COMMANDS)
def test_a_command_quoted_in_the_docs_names_flags_it_has(words):
  (sub,) = [a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
  assert words[0] in sub.choices, f"hybridflow {words[0]}: no such command"
  options = sub.choices[words[0]]._option_string_actions
  flags = [w.split("=")[0] for w in words[1:] if w.startswith("--")]
  overrides = [w for w in words[1:] if w.startswith(("--config.", "--noconfig."))]
  unknown = [f for f in flags if f not in options and not f.startswith(("--config.", "--noconfig."))]
  assert not unknown, f"hybridflow {' '.join(words)}: no such flags {unknown}"
  if overrides:
    assert words[0] in cli.CONFIG_COMMANDS, f"hybridflow {words[0]} takes no config overrides"
    _config(words, overrides)
