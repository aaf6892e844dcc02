"""The session recipe with hardest-half batches: fast_large_muon on the hardest 1,000 of 2,000.

airbench96_faster (Keller Jordan) reaches airbench96's accuracy in 0.79x its time by
training each batch only on the half of its examples that a small proxy net finds
hardest (resnet_jax/selection.py). Changes against configs/fast_large_muon.py, whose
docstring says what the rest does:
- selection.fraction 0.5: the model's forward and backward passes cover 1,000 of
  each batch's 2,000 examples, the ones of highest loss under a proxy (the same
  net at widths 32/64/64, 146,136 parameters, learning beside it). A step costs
  0.62 of a full one on a 2-core CPU (docs/recipes.md), so the same minutes buy
  1.6x the epochs; the easy half each step skips is the half the model already
  fits, and the last epochs of fast_large_muon memorised (99% train accuracy);
- 17 epochs instead of 10: what fits a 150-minute run on a 2-core CPU at that cost
  (docs/recipes.md), the whitening bias training for the first 0.375 of them as before.
Measured results, and which version of this file they used: docs/recipes.md.
"""

from configs import fast_large_muon


def get_config():
  config = fast_large_muon.get_config()
  config.selection.fraction = 0.5
  config.num_epochs = 17
  return config
