"""The model a config asks for: its preset and fields, its compute dtype, the flax module.

Here, not in models/ (pure architecture, no data) nor in train.py, because training,
evaluation, prediction and the benchmarks build the same model from the same config.
"""

import ml_collections

from resnet_jax import models, xla_cpu
from resnet_jax.data import datasets


def fields(config: ml_collections.ConfigDict) -> tuple[str, dict]:
  """(preset name, the model fields the config sets): unset (None) fields are the preset's."""
  set_fields = {k: v for k, v in config.model.items() if v is not None}
  return set_fields.pop("name"), set_fields


def compute_dtype(config: ml_collections.ConfigDict, trained_in: str | None = None
                  ) -> tuple[str, str]:
  """(config.dtype, why), "auto" resolved: `trained_in`, the dtype of the checkpoints a run
  resumes, else xla_cpu.auto_dtype() for this backend (bfloat16 on GPUs, TPUs and CPUs with
  bfloat16 instructions; parameters, BatchNorm statistics and the loss stay float32)."""
  if config.dtype != "auto":
    return config.dtype, "config.dtype"
  if trained_in:
    return trained_in, "dtype auto: the run being resumed was trained in it"
  dtype, why = xla_cpu.auto_dtype()
  return dtype, f"dtype auto: {why}"


def build_model(config: ml_collections.ConfigDict, dtype: str | None = None) -> models.Model:
  """The config's model, computing in `dtype` (compute_dtype's by default), with the
  dataset's class count, within its parameter budget for the dataset's images."""
  name, set_fields = fields(config)
  dataset = datasets.get(config.data)
  set_fields.setdefault("num_classes", dataset.num_classes)
  model = models.get_model(name, dtype=dtype or compute_dtype(config)[0], **set_fields)
  models.check_budget(model, dataset.image_shape)
  return model
