"""The one error type a user can fix, and how the command line reports it.

Anything below the command line may raise `UserError` for a problem in the user's input (a path, a
flag, a config value); `hybridflow` prints it as one line, `hybridflow COMMAND: error: MESSAGE`, on
stderr and exits with `EXIT_USER_ERROR`. Imports nothing, so any module can use it.
"""

from __future__ import annotations

import contextlib
import re
import sys

# The exit status of a user error (argparse's own, for a bad command line, is the same).
EXIT_USER_ERROR = 2


class UserError(Exception):
  """An error the user can fix; printed as one line, exit status `EXIT_USER_ERROR`."""


@contextlib.contextmanager
def reported_as_user_errors(*types: type[BaseException], prefix: str = ""):
  """Re-raises an exception of `types` as a UserError: `prefix` + its message's first line."""
  try:
    yield
  except types as e:
    lines = str(e).strip().splitlines()
    raise UserError(prefix + (lines[0] if lines else type(e).__name__)) from None


# scheme://...: gs://, s3://, file://, http://, ... (a Windows drive letter has no "//").
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def check_local_path(path, what: str = "") -> None:
  """UserError if `path` is a URL. Runs, bundles and results are read and written with local file
  operations (pathlib, orbax on a local path), so `gs://B/run` would become a local folder named
  `gs:` on each machine, each process writing its own. `what` prefixes the message."""
  if _URL.match(str(path)):
    raise UserError(f"{what}{path}: a URL; hybridflow reads and writes local paths only (on "
                    "several machines: a directory every process sees at the same path, e.g. a "
                    "shared file system or the bucket mounted with Cloud Storage FUSE)")


def fail(prog: str, message: str):
  """Prints `message` as the one error line of `prog` and exits with EXIT_USER_ERROR."""
  print(f"{prog}: error: {message}", file=sys.stderr)
  sys.exit(EXIT_USER_ERROR)
