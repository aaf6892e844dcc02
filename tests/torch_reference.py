"""The seed's two ResNets in PyTorch, written from ../shared/SEED_SPEC.md.

Test-only reference: parity tests convert these models' state_dicts and compare
outputs with resnet_jax.models. Written as two explicit classes, like the seed's
notebooks, rather than from the Flax family's fields, so that a mistake in the
family's presets cannot hide in a shared description.
"""

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
  """conv-BN-ReLU-conv-BN plus shortcut, then `act_out`."""

  def __init__(self, in_planes: int, planes: int, stride: int, act_out: nn.Module):
    super().__init__()
    self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = nn.Sequential()
    if stride != 1 or in_planes != planes:
      self.downsample = nn.Sequential(
          nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))
    self.act_out = act_out

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return self.act_out(out + self.downsample(x))


def _stage(in_planes: int, planes: int, blocks: int, stride: int, act_out) -> nn.Sequential:
  layers = [BasicBlock(in_planes, planes, stride, act_out)]
  layers += [BasicBlock(planes, planes, 1, act_out) for _ in range(blocks - 1)]
  return nn.Sequential(*layers)


class ShallowResNet(nn.Module):
  """2,777,674 parameters: 3 stages x 2 blocks, 64/128/256 channels, ReLU. `stem`, `widths`
  and `blocks` shrink it as the family's fields do (benchmark.py's --tiny)."""

  def __init__(self, num_classes: int = 10, stem: int = 64,
               widths: tuple[int, ...] = (64, 128, 256), blocks: tuple[int, ...] = (2, 2, 2)):
    super().__init__()
    self.conv1 = nn.Conv2d(3, stem, 3, stride=1, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(stem)
    self.layer1 = _stage(stem, widths[0], blocks[0], 1, nn.ReLU())
    self.layer2 = _stage(widths[0], widths[1], blocks[1], 2, nn.ReLU())
    self.layer3 = _stage(widths[1], widths[2], blocks[2], 2, nn.ReLU())
    self.fc = nn.Linear(widths[2], num_classes)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.layer3(self.layer2(self.layer1(out)))
    out = F.adaptive_avg_pool2d(out, 1).flatten(1)
    return self.fc(out)


class DeepResNet(nn.Module):
  """4,999,689 parameters: the seed's final deep notebook. `stem`, `widths` and `blocks`
  shrink it as the family's fields do: the training parity test trains a shorter stack of
  the same blocks, benchmark.py's --tiny a narrow one."""

  def __init__(self, num_classes: int = 10, stem_dropout: float = 0.432,
               dropout: float = 0.287, stem: int = 16,
               widths: tuple[int, ...] = (32, 64, 115, 256),
               blocks: tuple[int, ...] = (3, 4, 11, 2)):
    super().__init__()
    gelu = nn.GELU()  # exact erf form, PyTorch's default
    self.conv1 = nn.Conv2d(3, stem, 3, stride=1, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(stem)
    self.dropout1 = nn.Dropout(stem_dropout)
    self.layer1 = _stage(stem, widths[0], blocks[0], 1, gelu)
    self.dropout2 = nn.Dropout(dropout)
    self.layer2 = _stage(widths[0], widths[1], blocks[1], 2, gelu)
    self.maxpool = nn.AdaptiveMaxPool2d((24, 24))
    self.layer3 = _stage(widths[1], widths[2], blocks[2], 2, gelu)
    self.dropout3 = nn.Dropout(dropout)
    self.layer4 = _stage(widths[2], widths[3], blocks[3], 2, gelu)
    self.avgpool = nn.AdaptiveAvgPool2d((3, 3))
    self.fc = nn.Linear(widths[3] * 3 * 3, num_classes)

  def forward(self, x):
    out = self.dropout1(F.relu(self.bn1(self.conv1(x))))
    out = self.dropout2(self.layer1(out))
    out = self.maxpool(self.layer2(out))
    out = self.dropout3(self.layer3(out))
    out = self.avgpool(self.layer4(out))
    return self.fc(torch.flatten(out, 1))


def randomize_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
  """Non-trivial BN affine parameters and running statistics, so parity means something."""
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, nn.BatchNorm2d):
        n = module.num_features
        module.weight.copy_(0.5 + torch.rand(n, generator=generator))
        module.bias.copy_(0.2 * torch.randn(n, generator=generator))
        module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
        module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
