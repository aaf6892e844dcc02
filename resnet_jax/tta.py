"""Test-time augmentation: predictions averaged over mirrored and shifted views of each image.

Levels (config.eval.tta), as airbench evaluates:
  0  the image alone;
  1  the image and its mirror, 1/2 each;
  2  level 1 on the image (1/2) and on the image shifted one pixel up-left and
     one pixel down-right with reflect padding (1/4 each): six views.
A view's prediction is its softmax; the level's is their weighted mean. Mirrors
and one-pixel shifts are as likely as the training images themselves under the
flip and crop augmentations, so averaging over them removes some of the
prediction's dependence on exactly where the object sits. No TensorFlow here.
"""

import jax
import jax.numpy as jnp

from resnet_jax.data import augmentations

LEVELS = (0, 1, 2)


def _shift(images: jax.Array, d: int) -> jax.Array:
  """Every image's content moved by d pixels down and right, reflect padded."""
  shifts = jnp.full((images.shape[0], 2), d, jnp.int32)
  return augmentations.shift(images, shifts, abs(d), mode="reflect")


def views(images: jax.Array, level: int) -> tuple[list[jax.Array], list[float]]:
  """The views of a batch [b, H, W, C] at `level`, and their weights (summing to 1)."""
  if level == 0:
    return [images], [1.0]
  if level == 1:
    return [images, jnp.flip(images, 2)], [0.5, 0.5]
  shifted = [images, _shift(images, -1), _shift(images, 1)]
  return ([v for s in shifted for v in (s, jnp.flip(s, 2))],
          [0.25, 0.25, 0.125, 0.125, 0.125, 0.125])


def probabilities(logits_fn, images: jax.Array, level: int) -> jax.Array:
  """The weighted mean softmax of logits_fn over the views of `images` at `level`."""
  total = 0.0
  for view, weight in zip(*views(images, level)):
    total = total + weight * jax.nn.softmax(logits_fn(view))
  return total
