"""airbench94_muon's recipe in PyTorch, written for this project from its published
description: the peer `configs/fast_muon.py` races (scripts/race.py). Test-only, like
tests/torch_reference.py.

The pieces (Keller Jordan's airbench94_muon, 2024):
- CifarNet: a frozen 2x2 patch-whitening convolution (24 filters: the patch
  covariance's eigenvectors over sqrt(eigenvalue + 5e-4), and their negations; a
  trained bias), GELU, three groups of conv -> max-pool -> BN -> GELU -> conv -> BN
  -> GELU at widths 64/256/256 (no identity paths), a 3x3 max-pool and a bias-free
  head whose weights start at standard deviation 1, its logits divided by the width.
  Convolutions are bias-free and start with their first c_in filters dirac; BatchNorm
  keeps 0.6 of its running statistics per step, eps 1e-12, no trained scale.
- Muon for the convolution filters (lr 0.24, momentum 0.6, Nesterov; each step the
  filter bank renormalised to norm sqrt(c_out) and the update orthogonalised by 3
  Newton-Schulz iterations), SGD with Nesterov momentum 0.85 for the whitening bias,
  the BatchNorm biases (lr 0.053) and the head (lr 0.67), weight decay 2e-6 x batch
  stated per step; the summed cross-entropy with label smoothing 0.2; batch 2,000.
- Every rate decays linearly to 0 over the run (8 epochs), the whitening bias's over
  its first 3 epochs, after which it is frozen.
- Augmentation: alternating flip (each image mirrored in alternate epochs) and a
  translation of up to 2 pixels with reflected borders.
- Evaluation with TTA level 2: the logits of the image and its mirror, averaged,
  weighted 1/2, plus those of its one-pixel up-left and down-right shifts, 1/4 each.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MEAN = (0.4914, 0.4822, 0.4465)  # CIFAR-10's statistics, in [0, 1] units
STD = (0.2470, 0.2435, 0.2616)
WIDTHS = (64, 256, 256)


class BatchNorm(nn.BatchNorm2d):
  """airbench's: keeps `momentum` of the running statistics; bias only."""

  def __init__(self, features: int, momentum: float = 0.6, eps: float = 1e-12):
    super().__init__(features, eps=eps, momentum=1 - momentum)
    self.weight.requires_grad = False


class Conv(nn.Conv2d):
  def __init__(self, channels_in: int, channels_out: int):
    super().__init__(channels_in, channels_out, 3, padding="same", bias=False)

  def reset_parameters(self):
    super().reset_parameters()
    w = self.weight.data
    torch.nn.init.dirac_(w[:w.size(1)])


class ConvGroup(nn.Module):
  def __init__(self, channels_in: int, channels_out: int):
    super().__init__()
    self.conv1, self.norm1 = Conv(channels_in, channels_out), BatchNorm(channels_out)
    self.conv2, self.norm2 = Conv(channels_out, channels_out), BatchNorm(channels_out)

  def forward(self, x):
    x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
    return F.gelu(self.norm2(self.conv2(x)))


class CifarNet(nn.Module):
  def __init__(self, widths=WIDTHS, num_classes: int = 10):
    super().__init__()
    self.whiten = nn.Conv2d(3, 24, 2, padding=0, bias=True)
    self.whiten.weight.requires_grad = False
    self.groups = nn.Sequential(ConvGroup(24, widths[0]), ConvGroup(widths[0], widths[1]),
                                ConvGroup(widths[1], widths[2]))
    self.head = nn.Linear(widths[2], num_classes, bias=False)
    with torch.no_grad():
      self.head.weight.mul_(1 / self.head.weight.std())
      self.whiten.bias.zero_()

  def init_whiten(self, images: torch.Tensor, eps: float = 5e-4) -> None:
    """The whitening filters from normalised NCHW `images`."""
    c, (h, w) = images.shape[1], self.whiten.weight.shape[2:]
    patches = images.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c, h, w)
    flat = patches.reshape(len(patches), -1).double()
    eigenvalues, eigenvectors = torch.linalg.eigh(flat.T @ flat / len(flat))
    scaled = eigenvectors.T.reshape(-1, c, h, w) / torch.sqrt(eigenvalues.view(-1, 1, 1, 1) + eps)
    self.whiten.weight.data[:] = torch.cat((scaled, -scaled)).float()

  def forward(self, x, whiten_bias_grad: bool = True):
    bias = self.whiten.bias if whiten_bias_grad else self.whiten.bias.detach()
    x = F.gelu(F.conv2d(x, self.whiten.weight, bias))
    x = F.max_pool2d(self.groups(x), 3).flatten(1)
    return self.head(x) / x.size(-1)


def newton_schulz(g: torch.Tensor, steps: int, eps: float = 1e-7) -> torch.Tensor:
  """airbench94_muon's orthogonalisation of a 2-D update (float32 here, bf16 there)."""
  x = g / (g.norm() + eps)
  transposed = x.size(0) > x.size(1)
  if transposed:
    x = x.T
  a, b, c = (3.4445, -4.7750, 2.0315)
  for _ in range(steps):
    gram = x @ x.T
    x = a * x + (b * gram + c * gram @ gram) @ x
  return x.T if transposed else x


def muon_step(p: torch.Tensor, g: torch.Tensor, buf: torch.Tensor, lr: float, momentum: float,
              ns_steps: int) -> None:
  """One Muon step of a conv weight [out, in, h, w], in place (airbench's Muon.step)."""
  buf.mul_(momentum).add_(g)
  g = g.add(buf, alpha=momentum)  # Nesterov
  p.mul_(len(p) ** 0.5 / p.norm())
  p.add_(newton_schulz(g.reshape(len(g), -1), ns_steps).view(g.shape), alpha=-lr)


class Muon(torch.optim.Optimizer):
  def __init__(self, params, lr: float, momentum: float, ns_steps: int = 3):
    super().__init__(params, dict(lr=lr, momentum=momentum, ns_steps=ns_steps))

  @torch.no_grad()
  def step(self):
    for group in self.param_groups:
      for p in group["params"]:
        if p.grad is None:
          continue
        buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p.grad))
        muon_step(p, p.grad, buf, group["lr"], group["momentum"], group["ns_steps"])


def normalise(images: np.ndarray) -> torch.Tensor:
  """uint8 NHWC -> normalised float32 NCHW."""
  x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
  return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def epoch_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, epoch: int,
                  flips: torch.Tensor, generator: torch.Generator, translate: int = 2):
  """An epoch's batches: shuffled, alternating flip, reflect-padded random translation."""
  flipped = flips ^ bool(epoch % 2)
  x = torch.where(flipped.view(-1, 1, 1, 1), images.flip(-1), images)
  padded = F.pad(x, (translate,) * 4, mode="reflect")
  shifts = torch.randint(0, 2 * translate + 1, (len(x), 2), generator=generator)
  order = torch.randperm(len(x), generator=generator)
  for start in range(0, len(order) - batch_size + 1, batch_size):
    rows = order[start:start + batch_size]
    crops = torch.stack([padded[i, :, dy:dy + 32, dx:dx + 32]
                         for i, (dy, dx) in zip(rows.tolist(), shifts[rows].tolist())])
    yield crops, labels[rows]


def tta_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
  """airbench's TTA level 2, on logits."""
  mirror = lambda v: 0.5 * (model(v) + model(v.flip(-1)))
  padded = F.pad(x, (1,) * 4, mode="reflect")
  up_left, down_right = padded[:, :, :32, :32], padded[:, :, 2:, 2:]
  return 0.5 * mirror(x) + 0.25 * (mirror(up_left) + mirror(down_right))


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, tta: bool = True,
             batch_size: int = 2000, autocast: bool = False) -> float:
  model.eval()
  correct = 0
  for start in range(0, len(images), batch_size):
    x = images[start:start + batch_size]
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
      logits = tta_logits(model, x) if tta else model(x)
    correct += int((logits.argmax(1) == labels[start:start + batch_size]).sum())
  return correct / len(images)


def train(train_images: np.ndarray, train_labels: np.ndarray, epochs: float = 8,
          batch_size: int = 2000, seed: int = 0, widths=WIDTHS, autocast: bool = False,
          on_epoch=None) -> nn.Module:
  """airbench94_muon's training loop; `on_epoch(epoch, model)` after each epoch."""
  torch.manual_seed(seed)
  generator = torch.Generator().manual_seed(seed)
  images, labels = normalise(train_images), torch.from_numpy(train_labels).long()
  model = CifarNet(widths, num_classes=int(labels.max()) + 1).to(memory_format=torch.channels_last)
  model.init_whiten(images[:5000])
  steps_per_epoch = len(images) // batch_size
  total, whiten_steps = math.ceil(epochs * steps_per_epoch), math.ceil(3 * steps_per_epoch)
  wd = 2e-6 * batch_size
  norm_biases = [m.bias for m in model.modules() if isinstance(m, BatchNorm)]
  sgd = torch.optim.SGD([dict(params=[model.whiten.bias], lr=0.053, weight_decay=wd / 0.053),
                         dict(params=norm_biases, lr=0.053, weight_decay=wd / 0.053),
                         dict(params=[model.head.weight], lr=0.67, weight_decay=wd / 0.67)],
                        momentum=0.85, nesterov=True)
  muon = Muon([p for p in model.parameters() if p.ndim == 4 and p.requires_grad], lr=0.24,
              momentum=0.6)
  for group in sgd.param_groups + muon.param_groups:
    group["initial_lr"] = group["lr"]
  flips = torch.rand(len(images), generator=generator) < 0.5
  step = 0
  for epoch in range(math.ceil(total / steps_per_epoch)):
    model.train()
    for x, y in epoch_batches(images, labels, batch_size, epoch, flips, generator):
      with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        logits = model(x.contiguous(memory_format=torch.channels_last),
                       whiten_bias_grad=step < whiten_steps)
      F.cross_entropy(logits.float(), y, label_smoothing=0.2, reduction="sum").backward()
      sgd.param_groups[0]["lr"] = 0.053 * max(0.0, 1 - step / whiten_steps)
      for group in sgd.param_groups[1:] + muon.param_groups:
        group["lr"] = group["initial_lr"] * (1 - step / total)
      sgd.step()
      muon.step()
      model.zero_grad(set_to_none=True)
      step += 1
      if step >= total:
        break
    if on_epoch:
      on_epoch(epoch, model)
  return model
