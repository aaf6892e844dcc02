"""The datasets, one entry each, and the normalisation every pipeline applies.

An entry says all that the sources (sources.py), the split strings (splits.py),
the model's class count and the normalisation need to know of a dataset. No
TensorFlow and no JAX here.
"""

import dataclasses

import numpy as np


class DataError(ValueError):
  """Bad data or a bad split string; the message names the file or value."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  """One image-classification dataset.

  Attributes:
    title: its name in messages ("CIFAR-10").
    image_shape: (height, width, channels) of every image: what the sources read, the
      augmentations move and the model is initialised for.
    class_names: one per label, in label order.
    tfds_name: the TFDS builder.
    split_sizes: split name -> examples.
    split_files: split name -> the pickled batch files holding it, in order.
    files_dir, archive: the directory and the .tar.gz archive of those files,
      as the dataset's own site distributes them.
    archive_md5: the archive's MD5, as that site publishes it (download.py checks it).
    label_key: the key of the labels in each batch file.
    mean, std: per-channel statistics of its training images, in [0, 1] units.
  """

  title: str
  image_shape: tuple[int, int, int]
  class_names: tuple[str, ...]
  tfds_name: str
  split_sizes: dict[str, int]
  split_files: dict[str, tuple[str, ...]]
  files_dir: str
  archive: str
  archive_md5: str
  label_key: bytes
  mean: tuple[float, float, float]
  std: tuple[float, float, float]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


DATASETS = {
    "cifar10": Dataset(
        title="CIFAR-10",
        image_shape=(32, 32, 3),
        class_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                     "ship", "truck"),
        tfds_name="cifar10",
        split_sizes={"train": 50_000, "test": 10_000},
        split_files={"train": tuple(f"data_batch_{i}" for i in range(1, 6)),
                     "test": ("test_batch",)},
        files_dir="cifar-10-batches-py", archive="cifar-10-python.tar.gz",
        archive_md5="c58f30108f718f92721af3b95e74349a",
        label_key=b"labels",
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
    # The 100 fine labels (the archive's meta "fine_label_names" order); the 20 coarse
    # superclasses are not used.
    "cifar100": Dataset(
        title="CIFAR-100",
        image_shape=(32, 32, 3),
        class_names=tuple("""
            apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy
            bridge bus butterfly camel can castle caterpillar cattle chair chimpanzee clock
            cloud cockroach couch crab crocodile cup dinosaur dolphin elephant flatfish forest
            fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard
            lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid
            otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum
            rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail
            snake spider squirrel streetcar sunflower sweet_pepper table tank telephone
            television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf
            woman worm""".split()),
        tfds_name="cifar100",
        split_sizes={"train": 50_000, "test": 10_000},
        split_files={"train": ("train",), "test": ("test",)},
        files_dir="cifar-100-python", archive="cifar-100-python.tar.gz",
        archive_md5="eb9058c3a382ffc7106e4002c42a8d85",
        label_key=b"fine_labels",
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)),
}
DOWNLOAD_PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"  # CIFAR's own files
DOWNLOAD_URL = "https://www.cs.toronto.edu/~kriz/"  # + Dataset.archive

# config.data.normalization: "minus_one_to_one", the original project's Normalize(0.5, 0.5),
# which maps [0, 1] to [-1, 1]; "cifar", the dataset's own statistics; "seed", the first's
# name before, kept for the configs that set it.
NORMALIZATIONS = ("minus_one_to_one", "cifar", "seed")


def get(data_config) -> Dataset:
  """The dataset config.data.dataset names."""
  return DATASETS[data_config.dataset]


def normalization(data_config) -> tuple[np.ndarray, np.ndarray]:
  """(mean, std) per channel, float32, of config.data.normalization."""
  if data_config.normalization in ("minus_one_to_one", "seed"):
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
  elif data_config.normalization == "cifar":
    mean, std = get(data_config).mean, get(data_config).std
  else:
    raise ValueError(f"config.data.normalization={data_config.normalization!r} is not one of "
                     f"{list(NORMALIZATIONS)}")
  return np.asarray(mean, np.float32), np.asarray(std, np.float32)


def to_unit(images):
  """uint8 pixels (numpy or jax) -> float32 in [0, 1]."""
  return images.astype(np.float32) / np.float32(255)


def normalize(images, stats: tuple[np.ndarray, np.ndarray]):
  """Float32 images in [0, 1] -> the network's input, (images - mean) / std per channel.

  Works on numpy, jax and TensorFlow arrays alike: tf.data, the device pipeline,
  evaluation and prediction all normalise through it; `stats` is `normalization`'s.
  """
  mean, std = stats
  return (images - mean) / std


def normalize_pixels(images, stats: tuple[np.ndarray, np.ndarray]):
  """uint8 pixels (numpy or jax) -> the network's input: `normalize` of `to_unit`."""
  return normalize(to_unit(images), stats)
