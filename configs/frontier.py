"""The frontier recipe: the most accurate model under 5M parameters, FastResNet "frontier".

airbench96 (Keller Jordan) reaches 96.0% on clean CIFAR-10 with 9.9M parameters by
deepening airbench95 and adding augmentation; this is that recipe at half the
parameters, on configs/fast_large.py's (whose docstring, and fast.py's, say what
each shared piece does). What changes:
- model "frontier": each group's branch holds two convolutions instead of one
  (airbench96's depth), at widths 128/256/352 instead of airbench96's 128/384/512:
  4,844,152 parameters, under the project's 5M budget, and about the multiply-adds
  of fast_large: the extra convolutions run at the groups' pooled resolutions;
- Cutout 12 (data.augment.cutout) and a reflect-padded crop of up to 4 pixels
  instead of 2 (airbench96's): a deeper net memorises the training images sooner,
  and these hide or move more of each one;
- 40 epochs, with the triangle's peak and the whitening bias's epochs where
  airbench puts them (23% of the steps; 3 epochs), and lr 9.0 per 1,024 examples
  (airbench96's).
Measured results, and which version of this file they used: docs/recipes.md.
"""

from configs import fast_large


def get_config():
  config = fast_large.get_config()
  config.model.name = "frontier"
  config.num_epochs = 40
  config.optimizer.learning_rate = 9.0
  config.data.augment.reflect_crop = 4
  config.data.augment.cutout = 12
  return config
