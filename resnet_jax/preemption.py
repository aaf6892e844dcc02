"""Stopping a run cleanly on SIGTERM or SIGINT (a cluster's preemption, Ctrl-C).

The loop checks `StopSignals.received` between steps, checkpoints, and raises
`preempted(...)`: a SystemExit with the shell's exit code whose logged message says
how to resume.
"""

import signal
import threading

from absl import logging

from resnet_jax import checkpoints


class Preempted(SystemExit):
  """Training stopped on SIGTERM/SIGINT after checkpointing; rerunning resumes it."""


class StopSignals:
  """Turns SIGTERM and SIGINT into a flag checked between steps (main thread only)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __enter__(self):
    self.received = None
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.received = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def preempted(signal_name: str, step: int, epochs_done: int, epoch_step: int,
              steps_per_epoch: int, workdir: str) -> Preempted:
  """The exit for a run stopped by `signal_name` at train step `step`, its message logged."""
  code = 130 if signal_name == "SIGINT" else 143  # the shell's 128 + signal number
  message = (f"{signal_name}: stopped at step {step} (epoch {epochs_done + 1}, "
             f"step {epoch_step} of {steps_per_epoch}) and saved a checkpoint to "
             f"{checkpoints.checkpoint_dir(workdir)}; rerun the same command to resume")
  logging.warning(message)  # once: the console shows every warning (logs.py)
  return Preempted(code)
