"""Checkpoints of earlier layouts read into today's state, so that old workdirs keep working.

A checkpoint's meta "layout" says how its items hold the state (none: layout 1):
  1  (until 2026-12-01) FastResNet's whitening filters were part of "batch_stats",
     in the "model" item and in the lookahead average, which was the "train"
     item's "lookahead";
  2  the filters are the "constants" collection, never averaged, and weight
     averages are the "train" item's "averages", by name.
`as_saved` turns today's items (the abstract restore target) into a layout's, so
that Orbax restores what is on disk; `as_today` turns what it restored back.
tests/test_checkpoint_layouts.py resumes, evaluates and predicts with workdirs
written in layout 1.
"""

from flax import traverse_util

LAYOUT = 2


def _merged(tree: dict, extra: dict | None) -> dict:
  if not extra:
    return tree
  flat = traverse_util.flatten_dict(tree)
  return traverse_util.unflatten_dict({**flat, **traverse_util.flatten_dict(extra)})


def _without(tree: dict, like: dict | None) -> tuple[dict, dict | None]:
  """(tree without the paths of `like`, those paths' values)."""
  if not like:
    return tree, None
  flat, paths = traverse_util.flatten_dict(tree), traverse_util.flatten_dict(like)
  taken = {path: flat.pop(path) for path in paths}
  return traverse_util.unflatten_dict(flat), traverse_util.unflatten_dict(taken)


def as_saved(items: dict, layout: int) -> dict:
  """Today's checkpoint items as a checkpoint of `layout` holds them."""
  if layout >= LAYOUT:
    return items
  model = dict(items["model"])
  constants = model.pop("constants", None)
  if set(model) - {"params", "batch_stats"}:
    raise ValueError(f"it was written before the weight average(s) "
                     f"{sorted(set(model) - {'params', 'batch_stats'})} existed")
  model["batch_stats"] = _merged(model["batch_stats"], constants)
  saved = {**items, "model": model}
  if "train" in items:
    train = dict(items["train"])
    averages = train.pop("averages", None) or {}
    if set(averages) - {"lookahead"}:
      raise ValueError(f"it was written before the weight average(s) "
                       f"{sorted(set(averages) - {'lookahead'})} existed")
    if "lookahead" in averages:
      lookahead = averages["lookahead"]
      train["lookahead"] = {**lookahead,
                            "batch_stats": _merged(lookahead["batch_stats"], constants)}
    saved["train"] = train
  return saved


def as_today(restored: dict, today: dict, layout: int) -> dict:
  """Items restored from a checkpoint of `layout` as today's, shaped like `today`'s."""
  if layout >= LAYOUT:
    return restored
  constants = today["model"].get("constants")
  model = dict(restored["model"])
  model["batch_stats"], taken = _without(model["batch_stats"], constants)
  if taken is not None:
    model["constants"] = taken
  items = {**restored, "model": model}
  if "train" in restored:
    train = dict(restored["train"])
    if "lookahead" in train:
      lookahead = dict(train.pop("lookahead"))
      lookahead["batch_stats"], _ = _without(lookahead["batch_stats"], constants)
      train["averages"] = {"lookahead": lookahead}
    items["train"] = train
  return items
