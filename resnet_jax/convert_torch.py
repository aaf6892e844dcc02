"""Convert the original project's PyTorch checkpoints into Flax variables and Orbax checkpoints.

    python -m resnet_jax.convert_torch --model shallow \\
        --checkpoint ModifiedResNet.pth --output DIR

reads a .pth holding either the bare state_dict or a dict with
"model_state_dict" (the original project's training checkpoints), converts it, and writes an
Orbax checkpoint to DIR/checkpoints/0 that evaluation restores like a trained one.

Key mapping (seed -> Flax): `layerI.J.*` -> `layerI_J/*`, `downsample.0` ->
`downsample_conv`, `downsample.1` -> `downsample_bn`; conv weights OIHW -> HWIO;
BN weight/bias/running_mean/running_var -> params scale/bias and batch_stats
mean/var; `fc.weight` (out, C*h*w in PyTorch's (C, H, W) flatten order) ->
kernel (h*w*C, out) in Flax's (H, W, C) order. `num_batches_tracked` is ignored.
"""

import functools
import os
import pickle
import re
import warnings
import zipfile
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from absl import app, flags, logging
from flax import traverse_util

from resnet_jax import checkpoints, files, models
from resnet_jax.data import datasets
from resnet_jax.models import resnet

_IGNORED_SUFFIX = ".num_batches_tracked"
_MODULE_NAMES = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}
_LEAF_NAMES = {("params", "kernel"): "weight", ("params", "scale"): "weight",
               ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
               ("batch_stats", "var"): "running_var"}


class ConversionError(ValueError):
  """A state_dict that cannot be converted: names the offending key (every one, for keys
  and shapes that do not fit the model)."""


def torch_key(path: tuple[str, ...]) -> str:
  """("params", "layer1_0", "downsample_conv", "kernel") -> "layer1.0.downsample.0.weight"."""
  collection, *modules, leaf = path
  names = [_MODULE_NAMES.get(m, m.replace("_", ".")) for m in modules]
  return ".".join(names + [_LEAF_NAMES[collection, leaf]])


def torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  """The PyTorch shape of a Flax leaf: conv HWIO -> OIHW, linear (in, out) -> (out, in)."""
  if len(flax_shape) == 4:
    return tuple(flax_shape[i] for i in (3, 2, 0, 1))
  return tuple(reversed(flax_shape))


def _to_flax(value: np.ndarray, flax_shape: tuple[int, ...], head_pool_size: int) -> np.ndarray:
  """Re-lays a PyTorch array (already checked against `torch_shape`) for Flax."""
  if value.ndim == 4:  # conv OIHW -> HWIO
    return value.transpose(2, 3, 1, 0)
  if value.ndim == 2:  # linear (out, C*p*p) flattened as (C, H, W) -> (p*p*C, out) as (H, W, C)
    p = head_pool_size
    return value.reshape(value.shape[0], -1, p, p).transpose(2, 3, 1, 0).reshape(flax_shape)
  return value


def _as_numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch.Tensor; numpy has no bfloat16, so widen first
    value = value.detach().cpu()
    value = value.float() if value.is_floating_point() else value
    return value.numpy()
  return np.asarray(value)


def convert_state_dict(state_dict: Mapping[str, Any], model_name: str,
                       **model_overrides: Any) -> dict:
  """{"params", "batch_stats"} for `models.get_model(model_name, **model_overrides)`.

  Raises ConversionError naming every missing, unexpected or mis-shaped key.
  """
  return convert_for_model(state_dict, models.get_model(model_name, **model_overrides),
                           model_name)


@functools.lru_cache(maxsize=8)
def _variable_shapes(model: resnet.ResNet) -> dict:
  """{path: ShapeDtypeStruct} of the model's variables (tracing the model once per model),
  for CIFAR-10's images: the original project's models were trained on them."""
  image_shape = datasets.DATASETS["cifar10"].image_shape
  return traverse_util.flatten_dict(jax.eval_shape(
      functools.partial(models.init_variables, model, image_shape=image_shape),
      jax.random.key(0)))


def convert_for_model(state_dict: Mapping[str, Any], model: resnet.ResNet,
                      model_name: str) -> dict:
  """As `convert_state_dict`, for an already built model."""
  target = _variable_shapes(model)
  expected = {torch_key(path): path for path in target}
  _check_entries(state_dict)
  values = {key: value for key, value in state_dict.items()
            if not (key.endswith(_IGNORED_SUFFIX)
                    and key[:-len(_IGNORED_SUFFIX)] + ".running_mean" in expected)}
  _check_fit(values, {key: torch_shape(target[path].shape) for key, path in expected.items()},
             model_name)
  flat = {path: _to_flax(_as_numpy(values[key]), target[path].shape,
                         model.head_pool_size).astype(np.float32)
          for key, path in expected.items()}
  nonfinite = [key for key, path in expected.items() if not np.isfinite(flat[path]).all()]
  if nonfinite:
    raise ConversionError(f"key {nonfinite[0]!r} holds NaN or infinite values")
  # A variance below 0 makes BatchNorm's 1/sqrt(var + eps) NaN: every prediction one class.
  negative = [key for key, path in expected.items()
              if key.endswith(".running_var") and (flat[path] < 0).any()]
  if negative:
    raise ConversionError(f"key {negative[0]!r} holds negative variances")
  return traverse_util.unflatten_dict(flat)


def _check_entries(state_dict: Mapping[str, Any]) -> None:
  """Refuses, naming the first offending key, an entry no saved model has: a key that is not
  a name, or a value that is not a dense, floating-point array of distinct elements."""
  for key, value in state_dict.items():
    if not isinstance(key, str):
      raise ConversionError(f"key {key!r} ({type(key).__name__}) is not a parameter name (str)")
    _check_value(key, value)


def _check_value(key: str, value: Any) -> None:
  """Reads metadata only: a crafted file's torch.zeros(1).expand(10**9) stores one value,
  and must fail here rather than be materialised by a conversion."""
  if hasattr(value, "detach"):  # a torch.Tensor (so torch is installed)
    import torch  # pylint: disable=g-import-not-at-top
    if value.layout != torch.strided:  # sparse tensors have no strides nor numpy form
      raise ConversionError(f"key {key!r} is a {value.layout} tensor; weights are dense "
                            "(torch.strided)")
    strides, floating = value.stride(), value.is_floating_point()
  elif isinstance(value, np.ndarray):
    strides, floating = [s // value.itemsize for s in value.strides], value.dtype.kind == "f"
  else:
    raise ConversionError(f"key {key!r} holds a {type(value).__name__}, not a tensor")
  if _overlapping(value.shape, strides):
    raise ConversionError(f"key {key!r} of shape {tuple(value.shape)} has strides "
                          f"{tuple(strides)}, which repeat elements (an expanded view); "
                          "saved weights have one element per index")
  if not floating and not key.endswith(_IGNORED_SUFFIX):  # that one counts batches
    raise ConversionError(f"key {key!r} has dtype {value.dtype}; weights are floating point")


def _overlapping(shape: Sequence[int], strides: Sequence[int]) -> bool:
  """Whether two indices reach one element: taken by stride, each dimension must step past
  the span of those before it (a stride of 0 on a dimension of size > 1 never does)."""
  span = 0
  for stride, size in sorted((abs(st), sz) for sz, st in zip(shape, strides) if sz > 1):
    if stride <= span:
      return True
    span += stride * (size - 1)
  return False


def _check_fit(values: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]],
               model_name: str) -> None:
  """Compares shapes only, so nothing is converted (nor materialised) until every key fits."""
  problems = []
  for key, want in shapes.items():
    if key not in values:
      problems.append(f"missing key {key!r} (model expects shape {want})")
    elif tuple(values[key].shape) != want:
      problems.append(f"key {key!r} has shape {tuple(values[key].shape)}, model expects {want}")
  problems += [f"unexpected key {key!r} (shape {tuple(value.shape)})"
               for key, value in values.items() if key not in shapes]
  if problems:
    raise ConversionError(f"state_dict does not fit model {model_name!r}:\n  "
                          + "\n  ".join(problems))


# Sentences of torch.load's errors that advise loading the file with code allowed (or say
# how): a stranger's file must never be, so the user is not told to.
_TORCH_ADVICE = re.compile(r"weights_only|trust|safe_globals|file an issue|documentation|"
                           r"can still be loaded|Alternatively|Weights only load failed")


def _load_error(error: Exception) -> str:
  """torch.load's error in one line, without its advice to load the file with code allowed;
  a pickle its safe loader refused says so, with the loader's reason."""
  text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # its terminal colours
  if "TorchScript" in text:
    return ("a TorchScript archive (torch.jit.save), not a state_dict: save "
            "model.state_dict() with torch.save")
  sentences = re.split(r"(?<=\.)\s+|\n+", text)
  reason = " ".join(" ".join(s for s in sentences if not _TORCH_ADVICE.search(s)).split())
  reason = reason.replace("WeightsUnpickler error: ", "") or (
      "the file ends early" if isinstance(error, EOFError) else type(error).__name__)
  if isinstance(error, pickle.UnpicklingError):
    return f"not a pickle of tensors that loads without running code ({reason.rstrip('.')})"
  return reason


def load_state_dict(path: str) -> Mapping[str, Any]:
  """The model state_dict in a .pth: bare, or under "model_state_dict"."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("reading a PyTorch .pth needs torch: pip install torch "
                      "(the project's 'test' extra has it)") from e
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no PyTorch checkpoint at {path}")
  _check_stored(path)
  try:
    with warnings.catch_warnings():  # the error below says it all, in one line
      warnings.simplefilter("ignore")
      obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises pickle, zip and runtime errors alike
    raise ConversionError(f"cannot read {path} as a PyTorch checkpoint: {_load_error(e)}") from e
  if isinstance(obj, Mapping) and "model_state_dict" in obj:
    obj = obj["model_state_dict"]
  if not isinstance(obj, Mapping):
    raise ConversionError(f"{path} holds a {type(obj).__name__}, not a state_dict "
                          "or a dict with 'model_state_dict'")
  return obj


def _check_stored(path: str) -> None:
  """torch.save stores every member of its zip uncompressed (torch.load maps them): a
  compressed one is no file torch wrote, and torch.load would inflate it, a few kilobytes
  into gigabytes, before any value could be checked. (TorchScript compresses its code/,
  which torch.load does not read: it names such an archive itself.)"""
  try:
    with zipfile.ZipFile(path) as archive:
      members = archive.infolist()
  except (zipfile.BadZipFile, OSError, ValueError):  # no zip: torch.load says what it is
    return
  compressed = [m.filename for m in members if m.compress_type != zipfile.ZIP_STORED
                and "/code/" not in m.filename]
  if compressed:
    raise ConversionError(f"cannot read {path} as a PyTorch checkpoint: its member "
                          f"{compressed[0]!r} is compressed, which torch.save never does")


def convert_checkpoint(model_name: str, checkpoint: str, output: str) -> str:
  """Converts the .pth `checkpoint` into an Orbax checkpoint in `output`; returns its path."""
  existing = checkpoints.checkpoint_dir(output)
  if os.path.isdir(existing) and os.listdir(existing):
    raise FileExistsError(f"{existing} already exists, holding {sorted(os.listdir(existing))}; "
                          "choose another --output")
  try:
    files.check_creatable(output)
  except OSError as e:
    raise ConversionError(f"--output {output} cannot be written ({e.strerror or e}: "
                          f"{e.filename})") from None
  model = models.get_model(model_name)
  state_dict = load_state_dict(checkpoint)
  try:
    variables = convert_for_model(state_dict, model, model_name)
  except ConversionError as e:  # the command's one error line names the file
    raise ConversionError(f"{checkpoint}: {e}") from e
  try:
    return checkpoints.save_model(output, 0, variables, models.model_config(model_name, model),
                                  source="convert_torch",
                                  torch_checkpoint=os.path.abspath(checkpoint))
  except OSError as e:  # a full disk
    raise ConversionError(f"--output {output}: writing the checkpoint failed "
                          f"({e.strerror or e})") from e


FLAGS = flags.FLAGS


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # keep JAX's and Orbax's INFO lines off the output
  try:
    path = convert_checkpoint(FLAGS.model, FLAGS.checkpoint, FLAGS.output)
  except (ConversionError, FileNotFoundError, FileExistsError, ImportError) as e:
    raise SystemExit(f"error: {e}") from e
  print(f"wrote {path}")


if __name__ == "__main__":
  # Defined only when run as a program, so that importing this module never
  # collides with another module's --model.
  flags.DEFINE_enum("model", None, sorted(resnet.PRESETS),
                    "The original project's model the weights belong to.")
  flags.DEFINE_string("checkpoint", None, "The original project's .pth file.")
  flags.DEFINE_string("output", None, "Workdir to write the Orbax checkpoint into.")
  flags.mark_flags_as_required(["model", "checkpoint", "output"])
  app.run(main)
