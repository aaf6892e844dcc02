"""TensorFlow where it is installed, and a clear error where it is needed but missing.

tf.data input (config.data.pipeline="tfdata"), TFDS (config.data.source="tfds")
and clu's TensorBoard writer use TensorFlow. Training on the device pipeline
from CIFAR's files, evaluation (numpy batches), --mode eval and --mode predict
do not, so a JAX install without TensorFlow (many GPU and TPU machines) runs them.
"""

import functools

from resnet_jax import logs


class MissingTensorFlow(ImportError):
  """TensorFlow is needed for something the config asks for; the message says what."""


@functools.cache
def _import():
  try:
    with logs.native_output_to_log("TensorFlow's start-up"):
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      # JAX owns the accelerators; TensorFlow only feeds it from the host.
      try:
        tf.config.set_visible_devices([], "GPU")
      except RuntimeError:  # TensorFlow already initialised its devices elsewhere
        pass
  except ImportError:
    return None
  return tf


def available() -> bool:
  return _import() is not None


def tensorflow(purpose: str):
  """The tensorflow module (imported once, quietly, its GPUs hidden); raises
  MissingTensorFlow naming `purpose` when it cannot be imported."""
  tf = _import()
  if tf is None:
    raise MissingTensorFlow(
        f"{purpose} needs TensorFlow, which cannot be imported here: install it "
        "(pip install tensorflow), or train with config.data.pipeline='device' and "
        "config.data.source='files', which need none")
  return tf
