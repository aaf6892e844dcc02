"""The fast recipe: FastResNet "fast" (1,971,352 parameters) trained as airbench94 trains it.

airbench94 (Keller Jordan) reaches 94.01% on clean CIFAR-10 in 9.9 epochs; this is
its recipe in this project's pieces, 10 epochs, training on train[:45000] and
validating on the hold-out train[45000:]. What each idea does:
- model "fast": a frozen 2x2 patch-whitening convolution fitted to the data
  decorrelates pixels before the first learned layer, so SGD at a high rate
  does not have to undo the images' strong neighbour correlations; BatchNorm
  without a trained scale and a 1/9 logit scale keep the high rate stable.
  Every group convolution starts dirac (its first filters copy their input): at
  step 0 the net is already close to an identity map of the whitened image.
  BatchNorm keeps 0.6 of its running statistics per step, so they follow the
  fast-moving weights.
- SGD with Nesterov momentum 0.85, lr 11.5 and weight decay 0.0153 stated per
  1,024 examples (optimizer.per_examples), batch 1,024: few, large steps.
- BatchNorm biases at 64x the lr: they set each channel's threshold and are
  what moves fastest early on.
- The whitening bias trains for the first 3 epochs only.
- A triangle schedule: 0.2x -> 1x over the first 23% of steps, then down to 0.07x.
- Label smoothing 0.2.
- Alternating flip: each image is mirrored in every other epoch, so two epochs
  show every image both ways (random flips leave a quarter seen one way only).
- A reflect-padded random crop of up to 2 pixels: translation without the black
  borders that zero padding adds.
- Lookahead: every 5 steps the weights (and BatchNorm statistics) move to their
  running average, whose memory grows towards the end (optim.Lookahead); the
  run ends on the average, smoothing the last steps' noise.
- Test-time augmentation level 2 for the final result.
Measured results, and which version of this file they used: docs/recipes.md.
"""

from resnet_jax import default_config
from resnet_jax.data import augmentations


def triangle_warmup(config):
  """airbench's warm-up, 23% of the run, as a reference to config.num_epochs: a
  --config.num_epochs override (or a recipe's own) moves the peak with the run's end,
  where a number fixed here would outlast a shortened run."""
  return config.get_ref("num_epochs").to_float() * 23 / 100


def get_config():
  config = default_config.get_config("fast")
  config.num_epochs = 10
  config.batch_size = 1024
  config.eval_batch_size = 1000
  config.label_smoothing = 0.2
  config.data.train_split = "train[:45000]"
  config.data.eval_split = "train[45000:]"
  config.data.pipeline = "device"
  config.data.normalization = "cifar"
  config.data.augment = augmentations.preset("none", alternating_flip=1,
                                                       reflect_crop=2)
  config.eval.tta = 2
  config.optimizer.name = "sgd"
  config.optimizer.nesterov = True
  config.optimizer.momentum = 0.85
  config.optimizer.learning_rate = 11.5
  config.optimizer.weight_decay = 0.0153
  config.optimizer.per_examples = 1024
  config.optimizer.groups.bn_bias.lr_multiplier = 64.0
  config.optimizer.groups.whiten_bias.epochs = 3.0
  config.optimizer.schedule = "triangle"
  config.optimizer.warmup_epochs = triangle_warmup(config)
  config.optimizer.start_factor = 0.2
  config.optimizer.end_factor = 0.07
  config.optimizer.lookahead_every = 5
  return config
