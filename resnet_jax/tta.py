"""Test-time augmentation: predictions averaged over mirrored and shifted views of each image.

Levels (config.eval.tta), as airbench evaluates:
  0  the image alone;
  1  the image and its mirror, 1/2 each;
  2  level 1 on the image (1/2) and on the image shifted one pixel up-left and
     one pixel down-right with reflect padding (1/4 each): six views;
  3  (not airbench's) level 1 on every shift of up to one pixel on each axis, the
     image's own included, 1/9 each: eighteen views, three times level 2's cost.
A view's prediction is its softmax; the level's is their weighted mean. Mirrors
and one-pixel shifts are as likely as the training images themselves under the
flip and crop augmentations (a crop of up to 2 pixels makes each of level 3's
nine shifts equally likely), so averaging over them removes some of the
prediction's dependence on exactly where the object sits. No TensorFlow here.
"""

import jax
import jax.numpy as jnp

from resnet_jax.data import augmentations

LEVELS = (0, 1, 2, 3)


def _shift(images: jax.Array, dx: int, dy: int) -> jax.Array:
  """Every image's content moved by dx pixels right and dy down, reflect padded."""
  shifts = jnp.broadcast_to(jnp.array([dx, dy], jnp.int32), (images.shape[0], 2))
  return augmentations.shift(images, shifts, max(abs(dx), abs(dy)), mode="reflect")


def views(images: jax.Array, level: int) -> tuple[list[jax.Array], list[float]]:
  """The views of a batch [b, H, W, C] at `level`, and their weights (summing to 1)."""
  if level == 0:
    return [images], [1.0]
  if level == 1:
    shifted, weights = [(0, 0)], [1.0]
  elif level == 2:
    shifted, weights = [(0, 0), (-1, -1), (1, 1)], [1 / 2, 1 / 4, 1 / 4]
  else:
    shifted = [(dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    weights = [1 / 9] * 9
  moved = [_shift(images, dx, dy) if dx or dy else images for dx, dy in shifted]
  return ([v for m in moved for v in (m, jnp.flip(m, 2))],
          [w / 2 for w in weights for _ in range(2)])


def probabilities(logits_fn, images: jax.Array, level: int) -> jax.Array:
  """The weighted mean softmax of logits_fn over the views of `images` at `level`."""
  total = 0.0
  for view, weight in zip(*views(images, level)):
    total = total + weight * jax.nn.softmax(logits_fn(view))
  return total
