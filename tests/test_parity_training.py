"""The seed recipes train as PyTorch does: loss, parameters and BatchNorm statistics per update.

Both frameworks start from one PyTorch initialisation (tests/torch_reference.py,
converted with convert_torch), see the same fixed batches (no augmentation, the
deep model's dropout at 0 on both sides) and run each seed recipe's optimizer as
configs/shallow.py and configs/deep.py build it, through train.Steps, the jitted
step that training runs: shallow Adam 1e-3; deep Adam 1e-4 with coupled L2 1e-3,
3 accumulated micro-batches per update and a plateau reduction (factor 0.1)
driven half-way through on both sides.

The deep recipe trains the deep model at conftest.DEEP_EVERY_KIND_OF_BLOCK, 5 of its 20
blocks: every kind of block and layer and the same recipe, at a fraction of the
compile, which grows with the blocks (docs/performance.md). test_parity.py compares the
full model's function with PyTorch's.

Tolerance: float32 rounding, a few units in the last place of the values
compared (ATOL, RTOL; measured: at most 1.5e-6 on BatchNorm variances of order
1-10, 4e-6 on losses near 2.3). Three things make honest float32 programs
differ by more, and each is handled where it arises, nowhere else:
- Chaos: a 1e-7 difference grows through training (unsynchronised, the deep
  model's losses differ by 1e-3 after 20 updates). So each update starts from
  PyTorch's parameters and statistics and the test compares one update at a
  time. Our optimizer state (moments, counts, accumulation, plateau) is never
  synchronised, so its bookkeeping is compared across all the updates.
- Discrete choices: a ReLU input within rounding of zero, or two max-pool
  candidates within rounding of each other (the deep model's 16->24 max pool
  follows GELU, whose flat minimum at -0.17 makes near-ties common), may go
  either way. One flip moves a layer's gradient by a whole element's
  contribution (3% measured), which Adam turns into 1e-3 parameter
  differences. PyTorch replays our step's choice where its own is within
  ROUNDING of it (the largest such distance measured is 2e-5); any other
  difference fails the test (`Decisions`).
- Adam's division: an element whose gradient is within rounding of zero moves
  by lr * g / (|g| + eps), up to lr on the first update whatever the rounding.
  Each parameter's tolerance adds lr * GRADIENT_ROUNDING * max(s) / (s + eps),
  s being PyTorch's denominator sqrt(v_hat): its gradient's rounding (relative
  to the tensor's largest gradient) carried through that division. For an
  element with a typical gradient this adds well under 1e-6.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs import deep as deep_config
from configs import shallow as shallow_config
from resnet_jax import convert_torch, model_setup, optim, train
from resnet_jax.data import batches
from resnet_jax.models import layers, resnet
from tests import torch_reference
from tests.conftest import DEEP_EVERY_KIND_OF_BLOCK

ATOL, RTOL, LOSS_RTOL = 1e-6, 1e-6, 1e-5
ROUNDING = 1e-4
GRADIENT_ROUNDING = 5e-5  # measured: up to 1.5e-5 (the deep model's first update)
UPDATES = 8  # 4 at the initial lr, 4 after the plateau cut (deep): every quantity moves


class Decisions:
  """Records our jitted step's discrete choices and replays them in PyTorch where it is unsure.

  The choices are each ReLU's on/off and, in the deep model, which input of each
  window its 16->24 max pool takes (GELU's flat minimum at -0.17 makes near-ties
  there common). Where PyTorch's own choice is within ROUNDING of ours (a ReLU
  input that close to zero, a pool candidate that close to the maximum) it takes
  ours; any other difference is recorded in `disagreements`, and fails the test.
  """

  def __init__(self):
    self.relu_masks, self.pool_choices, self.sites, self.per_forward = {}, {}, 0, None
    self.calls, self.replayed, self.disagreements = 0, 0, []

  def count_sites(self, model: resnet.ResNet) -> None:
    self.sites = 0
    # Traced here, not through models.init_variables, whose jitted trace may be cached.
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
    self.per_forward = self.sites

  def jax_relu(self, x):
    site = self.sites % (self.per_forward or 1 << 30)  # tracing visits the sites in order
    self.sites += 1
    jax.debug.callback(functools.partial(self.relu_masks.__setitem__, site), x > 0)
    return jax.nn.relu(x)

  def torch_relu(self, x, inplace=False):
    del inplace
    ours = torch.from_numpy(np.asarray(self.relu_masks[self.calls]).transpose(0, 3, 1, 2).copy())
    self.calls = (self.calls + 1) % self.per_forward
    with torch.no_grad():
      self._check(ours != (x > 0), x.abs(), "ReLU input")
    return torch.where(ours, x, torch.zeros_like(x))

  def jax_pool_axis(self, pool_axis, x, axis, size, kind):
    if kind == "max":
      index = layers.pool_window_index(x.shape[axis], size)
      windows = jnp.take(x, index.reshape(-1), axis=axis)
      windows = windows.reshape(x.shape[:axis] + index.shape + x.shape[axis + 1:])
      jax.debug.callback(functools.partial(self.pool_choices.__setitem__, axis),
                         windows.argmax(axis + 1))
    return pool_axis(x, axis, size, kind)

  def torch_max_pool(self, x):
    """Our separable max pool (H, then W) taking our step's choices."""
    for axis in (2, 3):  # NCHW; ours pools NHWC axes 1, 2
      index = torch.from_numpy(layers.pool_window_index(x.shape[axis], 24))
      windows = x.index_select(axis, index.reshape(-1))
      windows = windows.reshape(x.shape[:axis] + index.shape + x.shape[axis + 1:])
      ours = torch.from_numpy(np.asarray(self.pool_choices[axis - 1]).transpose(0, 3, 1, 2)
                              .copy()).unsqueeze(axis + 1)
      with torch.no_grad():
        theirs = windows.argmax(axis + 1, keepdim=True)
        gap = windows.gather(axis + 1, theirs) - windows.gather(axis + 1, ours)
        self._check((ours != theirs).squeeze(axis + 1), gap.squeeze(axis + 1),
                    "max-pool gap")
      x = windows.gather(axis + 1, ours).squeeze(axis + 1)
    return x

  def _check(self, differ, distance, what: str) -> None:
    self.replayed += int(differ.sum())
    far = differ & (distance >= ROUNDING)
    if far.any():
      self.disagreements.append(f"{what} {float(distance[far].max()):.3g}")


def _recipe(name: str):
  """(PyTorch model, our config) for a seed recipe, dropout off."""
  torch.manual_seed(0)
  if name == "shallow":
    config = shallow_config.get_config()
    config.dtype = "float32"  # PyTorch's; dtype auto may be bfloat16 on this CPU
    return torch_reference.ShallowResNet().train(), config
  config = deep_config.get_config()
  config.dtype = "float32"
  config.model.stem_dropout = 0.0
  config.model.stage_dropout = (0.0,) * 4
  config.model.stage_blocks = DEEP_EVERY_KIND_OF_BLOCK
  return torch_reference.DeepResNet(stem_dropout=0.0, dropout=0.0,
                                    blocks=DEEP_EVERY_KIND_OF_BLOCK).train(), config


def _drive_plateau_to_a_reduction(config, state, scheduler):
  """Feeds both plateaus the same non-improving losses until each has cut the lr."""
  plateau = optim.plateau_from_config(config.optimizer)
  plateau_state = state.plateau
  for _ in range(config.optimizer.plateau.patience + 2):
    plateau_state = plateau.update(plateau_state, 1.0)
    scheduler.step(1.0)
  return state.replace(plateau=plateau_state)


def _adam_denominator(torch_model, optimizer, model, name) -> dict:
  """PyTorch's sqrt(v_hat) for every parameter, in our layout."""
  b2 = optimizer.param_groups[0]["betas"][1]
  denominators = {}
  for key, p in torch_model.named_parameters():
    state = optimizer.state[p]
    denominators[key] = (state["exp_avg_sq"] / (1 - b2 ** float(state["step"]))).sqrt()
  return convert_torch.convert_for_model({**torch_model.state_dict(), **denominators}, model,
                                         name)["params"]


def _compare(ours: dict, theirs: dict, denominators: dict, lr: float, update: int) -> None:
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ours), jax.tree.leaves(theirs)):
    tolerance = ATOL
    if path[0].key == "params":
      s = denominators
      for key in path[1:]:
        s = s[key.key]
      tolerance = ATOL + lr * GRADIENT_ROUNDING * s.max() / (s + 1e-8)
    excess = np.abs(a - b) - (tolerance + RTOL * np.abs(b))
    worst = np.unravel_index(excess.argmax(), excess.shape)
    assert excess[worst] <= 0, (f"update {update}: {jax.tree_util.keystr(path)}{list(worst)} "
                                f"is {a[worst]}, PyTorch's {b[worst]}")


@pytest.mark.parametrize("name", ["shallow", "deep"])
def test_seed_recipe_trains_as_pytorch_update_by_update(name, monkeypatch):
  decisions = Decisions()
  monkeypatch.setitem(layers.ACTIVATIONS, "relu", decisions.jax_relu)
  monkeypatch.setattr(layers, "_adaptive_pool_axis",
                      functools.partial(decisions.jax_pool_axis, layers._adaptive_pool_axis))
  monkeypatch.setattr(torch.nn.functional, "relu", decisions.torch_relu)
  torch_model, config = _recipe(name)
  if name == "deep":
    torch_model.maxpool.forward = decisions.torch_max_pool
  model = model_setup.build_model(config)
  decisions.count_sites(model)
  steps = train.Steps(config, model, total_steps=UPDATES * config.num_epochs)
  torch_optimizer = torch.optim.Adam(torch_model.parameters(), lr=config.optimizer.learning_rate,
                                     weight_decay=config.optimizer.weight_decay)
  scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
      torch_optimizer, factor=config.optimizer.plateau.factor,
      patience=config.optimizer.plateau.patience)

  def from_pytorch(state):
    variables = convert_torch.convert_for_model(torch_model.state_dict(), model, name)
    return steps.place_state(state.replace(**variables))

  tx, _ = optim.create_optimizer(config.optimizer, UPDATES, config.num_epochs)
  state = from_pytorch(train.create_train_state(
      config, model, tx, optim.plateau_from_config(config.optimizer),
      total_steps=UPDATES * config.num_epochs))
  initial = jax.device_get(state.params)
  accumulation = config.optimizer.accumulation_steps
  micro_batch = 8 if name == "shallow" else 4
  rng = np.random.default_rng(0)
  for update in range(UPDATES):
    if config.optimizer.plateau.enabled and update == UPDATES // 2:
      state = _drive_plateau_to_a_reduction(config, state, scheduler)
      assert float(state.plateau.scale) == pytest.approx(0.1)
      assert torch_optimizer.param_groups[0]["lr"] == pytest.approx(1e-5)
    torch_optimizer.zero_grad()
    for _ in range(accumulation):
      batch = {"image": rng.normal(size=(micro_batch, 32, 32, 3)).astype(np.float32),
               "label": rng.integers(0, 10, micro_batch).astype(np.int32)}
      state, metrics = steps.train(state, batches.place(batch, steps.data))
      jax.effects_barrier()  # our choices have arrived
      logits = torch_model(torch.from_numpy(batch["image"].transpose(0, 3, 1, 2).copy()))
      loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(batch["label"]).long())
      (loss / accumulation).backward()
      assert float(metrics.compute()["loss"]) == pytest.approx(loss.item(), rel=LOSS_RTOL)
    torch_optimizer.step()
    assert not decisions.disagreements, decisions.disagreements
    expected = convert_torch.convert_for_model(torch_model.state_dict(), model, name)
    _compare(jax.device_get({"params": state.params, "batch_stats": state.batch_stats}),
             expected, _adam_denominator(torch_model, torch_optimizer, model, name),
             torch_optimizer.param_groups[0]["lr"], update)
    state = from_pytorch(state)
  assert int(state.step) == UPDATES * accumulation
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), expected["params"], initial)
  assert max(jax.tree.leaves(moved)) > 100 * ATOL  # the updates are far above the tolerance
