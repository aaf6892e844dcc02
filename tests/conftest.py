"""Shared fixtures: small generated CIFAR-10-format data, smoke configs and runs, fault hooks.

CI runs the suite on three pytest-xdist workers (README's test command). Each worker has
a home of its own (`HOME`), so that the command lines the tests run keep their default
compilation cache (~/.cache/resnet_jax/jax) to that worker: jax does not write its
entries atomically, and a worker runs one test at a time. Nothing is written to the
real home.
"""

import importlib.util
import os
import pathlib
import pickle
import signal
import tarfile

import ml_collections
import numpy as np
import pytest

from resnet_jax.data import datasets

# PyTorch's CUDA wheel (the one pip takes on Python 3.13) loads triton on first use, which
# torch.optim triggers, and triton imported after TensorFlow 2.21 segfaults: loaded here first.
try:
  import torch._dynamo  # pylint: disable=unused-import
except ImportError:  # the lower-bounds set has no PyTorch
  pass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(REPO, "..", "shared", "data")
# The deep preset's stages at 1, 1, 2 and 1 of its 3, 4, 11 and 2 blocks: every kind of block
# it has (a projection at stride 1 and at stride 2, an identity block at width 115 after the
# 16->24 max pool) at a fraction of the 20 blocks' compile, for tests whose point does not
# depend on how often a block repeats.
DEEP_EVERY_KIND_OF_BLOCK = (1, 1, 2, 1)
# The shape models are initialised and counted for in tests of the models alone.
CIFAR10_IMAGE = datasets.DATASETS["cifar10"].image_shape


def load_script(name: str):
  """scripts/<name>.py as a module, for tests of its functions."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "scripts", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def write_cifar_dir(root, per_batch: int = 20, seed: int = 0) -> tuple[str, dict]:
  """A cifar-10-batches-py directory with random images; returns it and the NHWC arrays."""
  rng = np.random.default_rng(seed)
  directory = os.path.join(root, "cifar-10-batches-py")
  os.makedirs(directory)
  arrays = {"train": ([], []), "test": ([], [])}
  names = [(f"data_batch_{i}", "train") for i in range(1, 6)] + [("test_batch", "test")]
  for name, split in names:
    data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
    labels = [int(x) for x in rng.integers(0, 10, size=per_batch)]
    with open(os.path.join(directory, name), "wb") as f:
      pickle.dump({b"data": data, b"labels": labels, b"batch_label": name.encode()}, f)
    arrays[split][0].append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    arrays[split][1].append(np.asarray(labels, np.int32))
  return directory, {k: (np.concatenate(v[0]), np.concatenate(v[1])) for k, v in arrays.items()}


def write_cifar100_dir(root, per_split: int = 60, seed: int = 0) -> tuple[str, dict]:
  """A cifar-100-python directory as CIFAR's site ships it (pickled "train", "test" with
  b"data", b"fine_labels", b"coarse_labels", b"filenames"; "meta"), random images;
  returns it and the NHWC arrays with the fine labels."""
  rng = np.random.default_rng(seed)
  directory = os.path.join(root, "cifar-100-python")
  os.makedirs(directory)
  arrays = {}
  for split in ("train", "test"):
    data = rng.integers(0, 256, size=(per_split, 3072), dtype=np.uint8)
    fine = [int(x) for x in rng.integers(0, 100, size=per_split)]
    with open(os.path.join(directory, split), "wb") as f:
      pickle.dump({b"filenames": [f"img_{i}.png".encode() for i in range(per_split)],
                   b"batch_label": f"{split}ing batch 1 of 1".encode(),
                   b"fine_labels": fine, b"coarse_labels": [x // 5 for x in fine],
                   b"data": data}, f, protocol=2)
    arrays[split] = (data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1),
                     np.asarray(fine, np.int32))
  with open(os.path.join(directory, "meta"), "wb") as f:
    pickle.dump({b"fine_label_names": [b"apple"] * 100,
                 b"coarse_label_names": [b"fruit"] * 20}, f, protocol=2)
  return directory, arrays


@pytest.fixture
def cifar_dir(tmp_path):
  return write_cifar_dir(str(tmp_path))


@pytest.fixture
def cifar_archive(tmp_path):
  directory, arrays = write_cifar_dir(str(tmp_path / "src"))
  archive = str(tmp_path / "cifar-10-python.tar.gz")
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(directory, arcname="cifar-10-batches-py")
  return archive, arrays


def write_unlabeled(tmp_path) -> str:
  """A pickle of 40 synthetic test images without labels, as --mode predict reads; its path."""
  from resnet_jax.data import sources  # pylint: disable=g-import-not-at-top
  images, _ = sources.load_synthetic("test[:40]", {"train": 512, "test": 256})
  path = str(tmp_path / "unlabeled.pkl")
  with open(path, "wb") as f:
    pickle.dump({b"data": images}, f)
  return path


def data_config(location: str, **overrides) -> ml_collections.ConfigDict:
  from resnet_jax.data import augmentations  # pylint: disable=g-import-not-at-top
  config = dict(dataset="cifar10", source="files", dir=location, tfds_data_dir=None,
                augment=augmentations.preset("none"), normalization="minus_one_to_one")
  config.update(overrides)
  return ml_collections.ConfigDict(config)


def smoke_config(model: str | None = None, **changes):
  """configs/smoke.py with dotted-key changes, e.g. smoke_config(**{"optimizer.name": "sgd"});
  `model`: another preset instead, with its family's keys, unset (default_config.set_model)."""
  from configs import smoke  # pylint: disable=g-import-not-at-top
  from resnet_jax import default_config  # pylint: disable=g-import-not-at-top
  config = smoke.get_config()
  if model:
    default_config.set_model(config, model)
  for key, value in changes.items():
    parent, _, leaf = key.rpartition(".")
    default_config.lookup(config, parent)[leaf] = value
  return config


def on_train_batches(monkeypatch, action) -> None:
  """Passes the n-th training batch of this process (n from 1) through action(n, batch).

  The fault-injection hook: it wraps batches.train_batches, which serves the
  tf.data and the device pipeline alike.
  """
  from resnet_jax.data import batches  # pylint: disable=g-import-not-at-top
  make, drawn = batches.train_batches, [0]

  class Wrapped:
    def __init__(self, batches):
      self.batches = batches

    def __getattr__(self, name):  # num_examples, steps_per_epoch
      return getattr(self.batches, name)

    def epoch(self, epoch, start=0):
      for batch in self.batches.epoch(epoch, start):
        drawn[0] += 1
        yield action(drawn[0], batch)

  monkeypatch.setattr(batches, "train_batches", lambda *args: Wrapped(make(*args)))


def signal_at_batch(monkeypatch, n: int, signum: int) -> None:
  """Sends `signum` as the n-th training batch is drawn: its step runs, then the run stops."""

  def action(drawn, batch):
    if drawn == n:
      os.kill(os.getpid(), signum)
    return batch

  on_train_batches(monkeypatch, action)


def preempted_then_resumed(config, workdir: str, n: int = 21):
  """(state, history) of `config` trained in `workdir`, stopped by SIGTERM as its n-th
  training batch is drawn (21: step 5 of epoch 2 at 16 steps an epoch), then resumed."""
  from resnet_jax import preemption, train  # pylint: disable=g-import-not-at-top
  with pytest.MonkeyPatch.context() as patch:
    signal_at_batch(patch, n, signal.SIGTERM)
    with pytest.raises(preemption.Preempted):
      train.train_and_evaluate(config, workdir)
  return train.train_and_evaluate(config, workdir)


def refused_leaving_run_as_is(config, workdir: str, error: type[Exception], match: str) -> None:
  """Training `config` in `workdir` raises `error` matching `match`, and the run's
  checkpoints and history.json are as they were."""
  from resnet_jax import train  # pylint: disable=g-import-not-at-top
  saved = lambda: {p: p.stat().st_mtime_ns for p in pathlib.Path(workdir).rglob("*")
                   if "checkpoints" in p.parts or p.name == "history.json"}
  before = saved()
  with pytest.raises(error, match=match):
    train.train_and_evaluate(config, workdir)
  assert saved() == before


def untimed(history: list[dict]) -> list[dict]:
  """A history without the scalars that time the run: what an exact resume reproduces."""
  from resnet_jax import train  # pylint: disable=g-import-not-at-top
  return [{k: v for k, v in h.items() if k not in train.TIMED_SCALARS} for h in history]


def poison_batch(monkeypatch, n: int) -> None:
  """Makes the n-th training batch all NaN."""
  on_train_batches(monkeypatch, lambda drawn, batch: {**batch, "image": batch["image"] * np.nan}
                   if drawn == n else batch)


# Every file, by the seconds its tests took in all (docs/measurements/cpu/
# suite_durations_36d4eab_n3_2026-12-02.txt: three workers on the 2-core CI machine),
# longest first. With --dist loadfile a worker takes a whole file, so handing the long
# ones out first lets the workers finish together instead of one running a long file
# alone at the end. A file not listed (a new one) comes last.
LONGEST_FIRST = (
    "test_reliability.py", "test_checkpoints.py", "test_models.py", "test_device_check.py",
    "test_checkpoint_integrity.py",  # (new, not in that file: it trains and runs the CLI)
    "test_train.py", "test_fast_model.py", "test_multiprocess.py", "test_parity_training.py",
    "test_device_pipeline.py", "test_console.py",
    "test_selection.py",  # (new: two short trainings, ~50 s)
    "test_four_devices.py",
    "test_checkpoint_layouts.py", "test_seed_sweep.py", "test_tta.py", "test_race.py",
    "test_convert_torch.py", "test_parity.py", "test_summary.py", "test_optim.py",
    "test_data_sources.py", "test_profile_step.py", "test_input_pipeline.py",
    "test_airbench_reference.py", "test_download.py", "test_pipelines.py")


def pytest_addoption(parser):
  parser.addoption("--fuzz-examples", type=int, default=400,
                   help="examples each property-based test of tests/test_pickles.py tries "
                        "(400 keep the suite fast; thousands search harder)")


def pytest_configure(config):
  # xdist otherwise hands out the files with the most tests first, whatever their order.
  if hasattr(config.option, "loadscopereorder"):
    config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable


@pytest.fixture(scope="session", autouse=True)
def worker_home_and_compilation_cache(tmp_path_factory):
  """This worker's own home (module docstring), and jax's persistent compilation cache in
  it for the in-process runs too, as the command line uses it (config.compilation_cache_dir):
  the many runs of one config compile their steps once. PyTorch on one thread."""
  from resnet_jax import main  # pylint: disable=g-import-not-at-top
  home = tmp_path_factory.mktemp("home")
  os.environ["HOME"] = str(home)
  main.enable_compilation_cache(str(home / ".cache" / "resnet_jax" / "jax"))
  # PyTorch's OpenMP threads (two, one a core) spin while they wait for each other, and
  # beside another worker they wait a lot: the deep model's parity took 195 s with two
  # threads and 71 s with one, beside a training run (2026-12-01). One thread per worker,
  # here and in the scripts the tests start (which inherit the variable).
  os.environ["OMP_NUM_THREADS"] = "1"
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:  # an install without the test extra's PyTorch (.ci/minimum_versions.sh)
    return
  torch.set_num_threads(1)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
  """A 3-epoch smoke run, uninterrupted: (workdir, state, history)."""
  workdir = str(tmp_path_factory.mktemp("trained"))
  import jax  # pylint: disable=g-import-not-at-top
  from resnet_jax import train  # pylint: disable=g-import-not-at-top
  state, history = train.train_and_evaluate(smoke_config(), workdir)
  return workdir, jax.device_get(state), history

