"""Files the commands write: checked before any compute, and whole or not at all.

A command that writes over a file (predict's CSV, eval's metrics.json and figure,
the training history) writes a temporary file beside it and renames it into
place only once it is complete: a failure at any point (a bad input found late,
a full disk, Ctrl-C) leaves the earlier file as it was.
"""

import contextlib
import os
import stat
import tempfile


class OutputError(OSError):
  """A path a command cannot write; the message names it and the option that set it."""


@contextlib.contextmanager
def replaced_atomically(path: str, mode: str = "w", **open_kwargs):
  """A file object (mode "w" or "wb") whose contents become `path` when the block ends
  without an error. A link at `path` is replaced, never written through; an existing
  file's permissions are kept."""
  if mode not in ("w", "wb"):
    raise ValueError(f"mode {mode!r}: a replaced file is written whole")
  directory, name = os.path.split(os.path.abspath(path))
  # A fresh random name, opened O_CREAT|O_EXCL|O_NOFOLLOW: no path that already exists, a
  # planted file or link included, is ever opened, so none is written through.
  # The name's first 40 characters: a temporary name must fit the file system's limit
  # (255 bytes) wherever the name itself does.
  descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=f".{name[:40]}.",
                                           suffix=".part")
  ours = os.fstat(descriptor)
  try:
    with os.fdopen(descriptor, mode, **open_kwargs) as f:  # closes the descriptor, come what may
      # mkstemp makes 0600: a new file gets the umask's permissions, an existing one its own
      os.chmod(temporary, stat.S_IMODE(os.stat(path).st_mode) if os.path.isfile(path)
               else 0o666 & ~_UMASK)
      yield f
      # On disk before the rename: after a crash or power cut the path holds the old file
      # or the whole new one, never a renamed but empty one.
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, path)
  except BaseException:  # Ctrl-C too: only the file this call made is removed
    _remove_own(temporary, ours)
    raise


@contextlib.contextmanager
def reported_as(what: str, path: str):
  """An OSError in the block (a full disk while writing `path`) as an OutputError naming
  `what` and the path: one line for the user where a command's results could not be kept."""
  try:
    yield
  except OutputError:
    raise
  except OSError as e:
    raise OutputError(f"{what} {path} cannot be written ({e.strerror or e})") from e


def _remove_own(path: str, ours: os.stat_result) -> None:
  """Removes `path` if it is still the file this process created (not one swapped in)."""
  with contextlib.suppress(OSError):  # gone already, or not ours: the first error matters
    now = os.lstat(path)
    if (now.st_dev, now.st_ino) == (ours.st_dev, ours.st_ino):
      os.unlink(path)


def _read_umask() -> int:
  mask = os.umask(0)  # the only way to read it; at import, before any thread could race it
  os.umask(mask)
  return mask


_UMASK = _read_umask()


def check_writable(path: str, what: str) -> None:
  """Raises OutputError unless a file could be created at `path` (its folders included).

  `what` names the path for the user ("--output", "the eval folder"). Creates nothing.
  """
  if os.path.isdir(path):
    raise OutputError(f"{what} {path} is a directory, not a file")
  try:
    existing = check_creatable(os.path.dirname(os.path.abspath(path)))
  except OSError as e:
    raise OutputError(f"{what} {path} cannot be written ({e.strerror or e}: "
                      f"{e.filename})") from None
  try:
    longest = os.pathconf(existing, "PC_NAME_MAX")
  except (OSError, ValueError):  # a file system that states no limit
    return
  if len(os.fsencode(os.path.basename(path))) > longest:
    raise OutputError(f"{what} {path} cannot be written (its name is longer than the "
                      f"{longest} bytes the file system allows)")


def check_creatable(directory: str) -> str:
  """Raises OSError unless files could be made in `directory`, or, where it does not exist
  yet, in its nearest existing parent (whose name the error carries); returns the folder
  it tried. Creates nothing."""
  existing = os.path.abspath(directory)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  try:
    with tempfile.TemporaryFile(dir=existing):
      pass
  except OSError as e:
    e.filename = existing
    raise
  return existing
