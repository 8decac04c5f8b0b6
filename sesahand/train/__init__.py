"""Training the SesaHand ControlNet (docs/method.md, "Backbone and loss"; SF and AE active in
training).

* :mod:`.config`: the YAML config (``load_config``, ``TrainConfig``, ``config_hash``).
* :mod:`.data`: records from dataset folders, cached condition renders, label-keeping
  augmentation, batches (``build_dataset``, ``HandControlDataset``, ``collate``).
* :mod:`.model`: SD1.5 loading, the ControlNet with SF, AE, the loss.
* :mod:`.loop`: the accelerate training loop (``train``), checkpoints, validation, export.
* :mod:`.export`: the single-file ControlNet export.

Heavy dependencies (torch, diffusers, accelerate) are imported by the submodules, not here.
"""
