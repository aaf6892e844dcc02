"""A layer table like the original project's torchsummary output.

    python -m resnet_jax.summary --model deep [--dataset cifar100]

One row per module in call order: its path, type, output shape, the trainable
parameters it owns, and the running total. flax's own `tabulate` adds the
BatchNorm statistics into its "Total Parameters" line; this table counts only
the "params" collection, as the original project's 2,777,674 and 4,999,689 do.
"""

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from absl import app, flags, logging

from resnet_jax import models
from resnet_jax.data import datasets


def _own_param_count(tree) -> int:
  """Parameters held directly by a module, not by its submodules."""
  if not isinstance(tree, dict):
    return 0
  return sum(math.prod(v.shape) for v in tree.values() if not isinstance(v, dict))


def layer_rows(model: models.Model, image_shape: models.ImageShape
               ) -> list[tuple[str, str, tuple[int, ...], int]]:
  """(path, module type, output shape, own parameters) per module call, for inputs of
  `image_shape`."""
  calls = []

  def record(module, method_name):
    if method_name == "__call__" and module.path:
      calls.append((module.path, type(module).__name__))
      return True
    return False

  # Shapes only (jax.eval_shape): nothing is initialised, compiled or computed.
  variables = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0),
                                                           image_shape))
  images = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  _, state = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=False, capture_intermediates=record,
                               mutable=["intermediates"]), variables, images)
  rows = []
  for path, kind in calls:
    output, params = state["intermediates"], variables["params"]
    for name in path:
      output, params = output[name], params.get(name, {})
    rows.append(("/".join(path), kind, tuple(output["__call__"][0].shape),
                 _own_param_count(params)))
  return rows


def format_table(model: models.Model, image_shape: models.ImageShape) -> str:
  rows = layer_rows(model, image_shape)
  header = f"{'Layer (type)':<40}{'Output Shape':>22}{'Param #':>12}{'Total':>14}"
  lines = ["-" * len(header), header, "=" * len(header)]
  total = 0
  for path, kind, shape, n in rows:
    total += n
    lines.append(f"{f'{path} ({kind})':<40}{str(list(shape)):>22}{n:>12,}{total:>14,}")
  variables = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0),
                                                           image_shape))
  n_stats = sum(math.prod(leaf.shape) for name, tree in variables.items() if name != "params"
                for leaf in jax.tree.leaves(tree))
  lines += ["=" * len(header),
            f"Total params: {total:,}",
            f"Trainable params: {total:,}",
            f"Non-trainable state (BatchNorm statistics, frozen filters; not counted): "
            f"{n_stats:,}",
            f"Budget (max_params): {model.max_params:,}",
            "-" * len(header)]
  return "\n".join(lines)


FLAGS = flags.FLAGS


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # keep JAX's and Orbax's INFO lines off the output
  dataset = datasets.DATASETS[FLAGS.dataset]
  print(format_table(models.get_model(FLAGS.model, num_classes=dataset.num_classes),
                     dataset.image_shape))


if __name__ == "__main__":
  # Flags are defined only when run as a program, so importing this module
  # (tests, other tools) never collides with another module's --model.
  flags.DEFINE_enum("model", "shallow", models.PRESET_NAMES, "Model preset to summarise.")
  flags.DEFINE_enum("dataset", "cifar10", sorted(datasets.DATASETS),
                    "The dataset whose images and classes the model takes.")
  app.run(main)
