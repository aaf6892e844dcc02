"""What a run prints, and where everything else goes.

The console shows the run's own lines (this package's log records: the config
summary, the epoch lines, progress with ETA) and anyone's warnings and errors.
Libraries' INFO records (Orbax writes ~60 per checkpoint, JAX reports each
backend it probes) and TensorFlow's native start-up lines go to DIR/log.txt,
the full log, appended by every mode once the workdir may be written;
`configure(libraries_to_console=True)` (main's --log_libraries) shows them on the
console as well.
"""

import contextlib
import logging
import os
import sys
import tempfile
import time

import jax
from absl import logging as absl_logging

LOG_FILE = "log.txt"
# `extra=` for this package's records that are for the log file only (relayed output).
LOG_FILE_ONLY = {"log_file_only": True}
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


# Warnings that describe what this package chose to do, not a problem, and ask nothing
# of the user: Orbax warns whenever a manager is opened read-only, as eval and predict
# do to protect checkpoints, and whenever a checkpoint has no metric, as one saved
# mid-epoch on a stop signal has none. They go to the log file only.
_EXPECTED_WARNINGS = ("Given directory is read only",
                      "Requested `tracked_metric`; did not provide metrics.")


class _RunLines(logging.Filter):
  """Passes this package's records (but LOG_FILE_ONLY ones) and every warning."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING:
      return not str(record.msg).startswith(_EXPECTED_WARNINGS)
    return (record.pathname.startswith(_PACKAGE_DIR)
            and not getattr(record, "log_file_only", False))


class _ConsoleFormat(logging.Formatter):
  """"17:47:42 epoch 1/3: ...": the time and the message; warnings and errors say so."""

  def __init__(self):
    super().__init__("%(asctime)s %(message)s", "%H:%M:%S")

  def formatMessage(self, record: logging.LogRecord) -> str:
    text = super().formatMessage(record)
    if record.levelno >= logging.WARNING:
      text = text.replace(" ", f" {record.levelname}: ", 1)
    return text


class _LogFile(logging.Handler):
  """Every INFO-and-up record for DIR/log.txt: held in memory until `open` names the
  file in the workdir (a run that fails its checks must not create one), then appended there."""

  def __init__(self):
    super().__init__(logging.INFO)
    self.pending: list[logging.LogRecord] = []
    self.file: logging.FileHandler | None = None

  def emit(self, record: logging.LogRecord) -> None:
    if self.file is None:
      self.pending.append(record)
    else:
      self.file.emit(record)

  def open(self, path: str) -> None:
    if self.file is None:
      self.file = logging.FileHandler(path, encoding="utf-8")
      self.file.setFormatter(absl_logging.PythonFormatter())
      for record in self.pending:
        self.file.emit(record)
      self.pending.clear()

  def close(self) -> None:
    if self.file is not None:
      self.file.close()
    super().close()


_log_file: _LogFile | None = None


def configure(libraries_to_console: bool = False) -> None:
  """Console: the run's lines (everything if `libraries_to_console`); the log file: all."""
  global _log_file
  console = absl_logging.get_absl_handler()
  if not libraries_to_console and not any(isinstance(f, _RunLines) for f in console.filters):
    console.addFilter(_RunLines())
    console.setFormatter(_ConsoleFormat())
    # jax 0.7 gives its loggers a stderr handler of their own at import (its logging level's
    # default lets INFO through): its records still reach the log file, through the root.
    for name in ("jax", "jaxlib"):
      for handler in logging.getLogger(name).handlers[:]:
        if type(handler) is logging.StreamHandler:  # pylint: disable=unidiomatic-typecheck
          logging.getLogger(name).removeHandler(handler)
  if _log_file is None:
    _log_file = _LogFile()
    logging.getLogger().addHandler(_log_file)


def write_log_file(workdir: str) -> None:
  """Starts DIR/log.txt (with what was logged so far; process i > 0 of several writes
  DIR/log.process<i>.txt); nothing when `configure` never ran."""
  if _log_file is not None and os.path.isdir(workdir):
    index = jax.process_index()
    path = os.path.join(workdir, LOG_FILE if index == 0 else f"log.process{index}.txt")
    try:
      _log_file.open(path)
    except OSError as e:  # eval and predict of a workdir the user may only read
      absl_logging.warning("not logging to %s: %s", path, e)


@contextlib.contextmanager
def native_output_to_log(what: str):
  """Sends what native code writes to stderr inside the block to the log, not the console.

  TensorFlow's C++ start-up prints INFO lines and, on a machine without a GPU, a
  CUDA "failed call to cuInit" error, none of which concern a run whose
  accelerators JAX owns. Whatever Python prints to stderr inside the block is
  captured too; an exception still propagates and is reported after it.
  """
  sys.stderr.flush()
  with tempfile.TemporaryFile() as captured:
    saved = os.dup(2)
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      text = captured.read().decode(errors="replace").strip()
      if text:
        absl_logging.info("%s wrote to stderr:\n%s", what, text, extra=LOG_FILE_ONLY)


class Progress:
  """Logs "step s/total (p%), r steps/s, ETA" every `every_secs` seconds of training.

  clu.periodic_actions.ReportProgress does this, but importing it imports
  TensorFlow (through clu.metric_writers), which accelerator installs may lack.
  """

  def __init__(self, total_steps: int, every_secs: float = 60.0):
    self.total_steps, self.every_secs = total_steps, every_secs
    self._start = None  # (time, step) once the first step has run
    self._last_time = None

  def __call__(self, step: int) -> None:
    now = time.monotonic()
    if self._start is None:  # the first step includes compilation: time from after it
      self._start, self._last_time = (now, step), now
      return
    if now - self._last_time < self.every_secs or step == self._start[1]:
      return
    # The rate since the start, not since the last line: steps are counted as dispatched,
    # which runs ahead of the device in bursts, so a minute's count of slow steps (and the
    # evaluations between epochs) would swing the ETA from half to four times the truth.
    rate = (step - self._start[1]) / (now - self._start[0])
    eta = (self.total_steps - step) / rate
    absl_logging.info("step %d/%d (%.1f%%), %.2f steps/s, ETA %s", step, self.total_steps,
                      100 * step / self.total_steps, rate, _duration(eta))
    self._last_time = now


def _duration(seconds: float) -> str:
  minutes = round(seconds / 60)
  return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


class ScalarWriter:
  """The metric writer where TensorFlow is missing: TensorBoard scalars through tensorboard's
  own event writer (clu's writers import TensorFlow); hyper-parameters go to the log.

  `workdir` None (processes other than 0) writes nothing but the log.
  """

  def __init__(self, workdir: str | None):
    from tensorboard.summary import Writer  # pylint: disable=g-import-not-at-top
    self._events = Writer(workdir) if workdir is not None else None

  def write_hparams(self, hparams: dict) -> None:
    absl_logging.info("hyper-parameters: %s", hparams, extra=LOG_FILE_ONLY)

  def write_scalars(self, step: int, scalars: dict) -> None:
    if self._events is not None:
      for name, value in scalars.items():
        self._events.add_scalar(name, float(value), step)
      self._events.flush()

  def close(self) -> None:
    if self._events is not None:
      self._events.close()


def metric_writer(workdir: str, hparams: dict | None, tensorflow: bool):
  """TensorBoard (and log) writer, with `hparams` (flat: {"a.b": value}) written once when
  given. clu's default writer where TensorFlow is installed (`tensorflow`: clu's
  metric_writers imports it); tensorboard's own event writer, scalars only, where not."""
  if tensorflow:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  else:
    writer = ScalarWriter(workdir if jax.process_index() == 0 else None)
  if hparams is not None:
    writer.write_hparams({k: v if isinstance(v, (int, float, str, bool)) else str(v)
                          for k, v in hparams.items()})
  return writer
