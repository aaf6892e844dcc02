"""What a person sees: the run's own lines on the console, the rest in DIR/log.txt; and a
whole train / eval / predict cycle where TensorFlow cannot be imported."""

import glob
import logging
import os
import pickle
import re
import subprocess
import sys

from resnet_jax import logs
from tests.conftest import REPO, write_cifar_dir

# `python -c` with tensorflow and tensorflow_datasets made unimportable, then main as -m would.
_WITHOUT_TENSORFLOW = ("import runpy, sys; sys.modules.update(tensorflow=None, "
                       "tensorflow_datasets=None); sys.argv[0] = 'resnet_jax.main'; "
                       "runpy.run_module('resnet_jax.main', run_name='__main__')")


def _main(*args: str, tensorflow: bool = True) -> subprocess.CompletedProcess:
  command = ["-m", "resnet_jax.main"] if tensorflow else ["-c", _WITHOUT_TENSORFLOW]
  return subprocess.run([sys.executable, *command, *args], capture_output=True, text=True,
                        cwd=REPO)


def _console_lines(result: subprocess.CompletedProcess) -> list[str]:
  """The lines a user sees, but the one a jaxlib older than the CPU defaults prints
  (tests/test_train.py tests it): a run on Colab's jax 0.7.2 shows it once."""
  return [line for line in (result.stdout + result.stderr).splitlines()
          if line.strip() and "one of the project's CPU speed defaults" not in line]


def test_a_smoke_run_shows_its_own_lines_and_logs_the_libraries(tmp_path):
  workdir = str(tmp_path / "run")
  result = _main("--config", "configs/smoke.py", "--workdir", workdir,
                 "--config.num_epochs=2")
  assert result.returncode == 0, result.stderr[-2000:]
  lines = _console_lines(result)
  # The devices, the compute dtype and why, the model summary, one line per epoch; no
  # Orbax, JAX or TensorFlow chatter.
  assert len(lines) == 5, "\n".join(lines)
  assert all(re.match(r"\d\d:\d\d:\d\d ", line) for line in lines), "\n".join(lines)
  assert lines[1].endswith("computing in float32 (config.dtype)")  # smoke.py sets it
  assert "model shallow: 19,954 parameters" in lines[2]
  assert [line.split()[1:3] for line in lines[3:]] == [["epoch", "1/2:"], ["epoch", "2/2:"]]
  with open(os.path.join(workdir, "log.txt")) as f:
    log = f.read()
  assert "epoch 2/2" in log and "orbax" in log.lower()  # the full log keeps everything
  assert "Unable to initialize backend" not in result.stderr and "cuInit" not in result.stderr


def test_train_eval_and_predict_run_where_tensorflow_cannot_be_imported(tmp_path):
  directory, arrays = write_cifar_dir(str(tmp_path))
  workdir = str(tmp_path / "run")
  config = ["--config", "configs/smoke.py", "--workdir", workdir,
            "--config.data.source=cifar10_dir", f"--config.data.dir={directory}",
            "--config.data.pipeline=device", "--config.data.eval_split=test",
            "--config.num_epochs=1"]
  trained = _main(*config, tensorflow=False)
  assert trained.returncode == 0, trained.stderr[-3000:]
  assert len(_console_lines(trained)) == 4, trained.stderr  # devices, dtype, model, an epoch
  assert glob.glob(os.path.join(workdir, "events.out.tfevents.*"))  # tensorboard's writer
  evaluated = _main(*config, "--mode", "eval", tensorflow=False)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert "test: accuracy" in evaluated.stdout and "on 20 examples" in evaluated.stdout
  unlabeled = str(tmp_path / "unlabeled.pkl")
  with open(unlabeled, "wb") as f:
    pickle.dump({b"data": arrays["test"][0]}, f)
  # A workdir whose log cannot be written (one the user may only read) still predicts.
  os.rename(os.path.join(workdir, "log.txt"), str(tmp_path / "training_log.txt"))
  os.mkdir(os.path.join(workdir, "log.txt"))
  predicted = _main(*config, "--mode", "predict", "--input", unlabeled, "--output",
                    str(tmp_path / "p.csv"), tensorflow=False)
  assert predicted.returncode == 0, predicted.stderr[-3000:]
  assert "wrote 20 predictions" in predicted.stdout
  assert f"not logging to {workdir}/log.txt" in predicted.stderr
  assert len((tmp_path / "p.csv").read_text().splitlines()) == 21  # ID,Labels and 20 rows
  # What does need TensorFlow says so in one line, before any compute.
  tfdata = _main(*config, "--config.data.pipeline=tfdata", "--workdir", str(tmp_path / "tf"),
                 tensorflow=False)
  assert tfdata.returncode != 0
  assert ("error: config.data.pipeline='tfdata' needs TensorFlow, which cannot be imported"
          in tfdata.stderr), tfdata.stderr[-2000:]
  assert not os.path.exists(tmp_path / "tf")


def test_progress_reports_rate_and_eta_once_a_minute(monkeypatch):
  now = [100.0]
  monkeypatch.setattr(logs.time, "monotonic", lambda: now[0])
  lines = []
  monkeypatch.setattr(logs.absl_logging, "info", lambda fmt, *args, **kw: lines.append(fmt % args))
  progress = logs.Progress(total_steps=1000, every_secs=60)
  progress(1)  # the first step compiles: the clock starts after it
  now[0] += 30
  progress(31)
  assert not lines  # not a minute yet
  now[0] += 30
  progress(61)  # 60 steps in 60 s: 939 left at 1 step/s
  assert lines == ["step 61/1000 (6.1%), 1.00 steps/s, ETA 16m"]
  now[0] += 3600
  progress(361)  # 360 steps in 3,660 s since the first: 639 left at 0.098 steps/s
  assert lines[-1] == "step 361/1000 (36.1%), 0.10 steps/s, ETA 1h48m"


def test_progress_s_eta_holds_steady_when_steps_are_dispatched_in_bursts(monkeypatch):
  """Asynchronous dispatch counts 23-second steps in bursts (1, then 5, a report, as a
  10-epoch run on 2 CPU cores logged): the ETA nears the truth instead of swinging between
  a quarter and four times it, as a rate over the last minute did."""
  now = [0.0]
  monkeypatch.setattr(logs.time, "monotonic", lambda: now[0])
  lines = []
  monkeypatch.setattr(logs.absl_logging, "info", lambda fmt, *args, **kw: lines.append(fmt % args))
  progress, step, truth = logs.Progress(total_steps=220, every_secs=60), 1, []
  progress(step)
  for burst in (1, 5) * 5:  # 3 steps every 70 s on average
    now[0] += 70
    step += burst
    progress(step)
    truth.append((220 - step) * 70 / 3 / 60)
  assert len(lines) == 10
  etas = [line.rsplit("ETA ", 1)[1] for line in lines]
  minutes = [int(e.split("h")[0]) * 60 + int(e.split("h")[1][:-1]) if "h" in e else int(e[:-1])
             for e in etas]
  assert all(abs(m - t) <= 0.2 * t for m, t in list(zip(minutes, truth))[3:]), (etas, truth)


def test_warnings_that_ask_nothing_of_the_user_stay_in_the_log_file():
  """Orbax's notes on what the package chose (read-only managers for eval, no metric for a
  mid-epoch save) are not shown on the console; any other warning is."""
  console = logs._RunLines()  # pylint: disable=protected-access

  def warning(message):
    return logging.LogRecord("absl", logging.WARNING, "/site-packages/orbax/manager.py", 1,
                             message, None, None)

  assert not console.filter(warning("Requested `tracked_metric`; did not provide metrics."))
  assert not console.filter(warning("Given directory is read only, /tmp/x"))
  assert console.filter(warning("Disk almost full"))
