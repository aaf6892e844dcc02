"""Augmentation presets and normalisations shared by the tf.data and device pipelines.

No TensorFlow and no JAX here: configs, the tf.data pipeline, the on-device
pipeline and prediction all read these.

Augmentation fields (0 disables one), applied in this order, as the seed's
torchvision Compose lists them:
  hflip, vflip      probability of a horizontal / vertical flip
  alternating_flip  1: instead of random horizontal flips, each image is flipped on
                    alternate epochs (a random half in even epochs, the other half
                    in odd ones): every image is seen both ways every two epochs,
                    where random flips leave a quarter seen one way (airbench);
                    needs hflip 0
  rotation          degrees: angle ~ U(-r, r), nearest neighbour, zero fill
                    (torchvision RandomRotation)
  zoom              scale ~ U(1 - z, 1 + z) about the centre, nearest, zero fill
  crop_padding      RandomCrop(32, padding=p): a uniform integer shift in [-p, p]
                    per axis with zero fill, which is exactly pad-then-crop
  translate         fraction f: shift = round(U(-32 f, 32 f)) pixels per axis
                    (torchvision RandomAffine(translate=(f, f)))
  reflect_crop      pixels p: a uniform integer shift in [-p, p] per axis with the
                    borders reflected, not zero-filled (airbench's reflect-padded
                    random crop: no black bands for the net to learn)
  brightness, contrast, saturation, hue
                    torchvision ColorJitter: factors ~ U(1 - b, 1 + b) etc.,
                    hue shift ~ U(-h, h), the four applied in a random order per
                    image, clipped to [0, 1]
"""

import numpy as np

AUGMENT_FIELDS = ("hflip", "vflip", "alternating_flip", "rotation", "zoom", "crop_padding",
                  "translate", "reflect_crop", "brightness", "contrast", "saturation", "hue")
AUGMENT_PRESETS = {
    "none": {},
    # Seed shallow notebook: RandomHorizontalFlip, RandomCrop(32, padding=4).
    "shallow": {"hflip": 0.5, "crop_padding": 4},
    # Seed deep notebook: flips both ways, RandomRotation(10), RandomCrop(32, 4),
    # RandomAffine(translate=(0.1, 0.1)), ColorJitter(0.2, 0.2, 0.2, 0.1).
    "deep": {"hflip": 0.5, "vflip": 0.5, "rotation": 10.0, "crop_padding": 4,
             "translate": 0.1, "brightness": 0.2, "contrast": 0.2, "saturation": 0.2,
             "hue": 0.1},
}
NORMALIZATIONS = {
    "seed": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # the seed's Normalize(0.5, 0.5)
    "cifar": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),  # per-channel statistics
}
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")


def augment_settings(preset: str = "none", **overrides: float) -> dict[str, float]:
  """Every augmentation field for `preset`, with overrides; errors name the bad key."""
  if preset not in AUGMENT_PRESETS:
    raise ValueError(f"augmentation preset {preset!r} is not one of {sorted(AUGMENT_PRESETS)}")
  settings = {name: 0.0 for name in AUGMENT_FIELDS}
  settings.update(AUGMENT_PRESETS[preset])
  settings.update(overrides)
  check_augment(settings)
  return settings


def check_augment(settings) -> None:
  """Validates an augmentation mapping (a dict or ConfigDict)."""
  unknown = sorted(set(settings) - set(AUGMENT_FIELDS))
  if unknown:
    raise ValueError(f"config.data.augment has unknown augmentation(s) {unknown}; "
                     f"known: {list(AUGMENT_FIELDS)}")
  for name in ("hflip", "vflip"):
    if not 0 <= settings.get(name, 0) <= 1:
      raise ValueError(f"config.data.augment.{name}={settings[name]} is a probability, "
                       "not in [0, 1]")
  for name in AUGMENT_FIELDS:
    if settings.get(name, 0) < 0:
      raise ValueError(f"config.data.augment.{name}={settings[name]} must be >= 0")
  for name in ("zoom", "brightness", "contrast", "saturation"):
    if settings.get(name, 0) >= 1:
      raise ValueError(f"config.data.augment.{name}={settings[name]} must be < 1")
  if settings.get("alternating_flip", 0) not in (0, 1):
    raise ValueError(f"config.data.augment.alternating_flip={settings['alternating_flip']} "
                     "must be 0 or 1")
  if settings.get("alternating_flip", 0) and settings.get("hflip", 0):
    raise ValueError(f"config.data.augment.alternating_flip=1 replaces random horizontal "
                     f"flips: set config.data.augment.hflip=0, not {settings['hflip']}")
  if settings.get("hue", 0) > 0.5:
    raise ValueError(f"config.data.augment.hue={settings['hue']} must be <= 0.5")


def alternating_flip_bits(seed: int, num_examples: int) -> np.ndarray:
  """Which examples are flipped in even epochs (odd epochs flip the others); from `seed`."""
  return np.random.default_rng([seed, 2]).random(num_examples) < 0.5


def to_unit(images):
  """uint8 pixels (numpy or jax) -> float32 in [0, 1]."""
  return images.astype(np.float32) / np.float32(255)


def normalize_pixels(images, name: str):
  """uint8 pixels (numpy or jax) -> the network's input: `normalize` of `to_unit`."""
  return normalize(to_unit(images), name)


def normalize(images, name: str):
  """Float32 images in [0, 1] -> the network's input, (images - mean) / std per channel.

  Works on numpy, jax and TensorFlow arrays alike: tf.data, the device pipeline
  and prediction all normalise through it.
  """
  if name not in NORMALIZATIONS:
    raise ValueError(f"config.data.normalization={name!r} is not one of {sorted(NORMALIZATIONS)}")
  mean, std = (np.asarray(v, np.float32) for v in NORMALIZATIONS[name])
  return (images - mean) / std
