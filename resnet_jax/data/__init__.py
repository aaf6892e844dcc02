"""Input: datasets.py (each dataset one entry, the normalisation), splits.py (split strings,
process rows), sources.py (a split's arrays from files, TFDS or generated), augmentations.py
(each augmentation once, both kernels), tfdata_pipeline.py and device_pipeline.py (training
batches on the host or on the devices), batches.py (the one interface the loop reads)."""
