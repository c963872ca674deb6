"""The diffusion engine: DreamBooth-tuned SD U-Net, mask-conditioned ControlNet, Style Swap rendering.

Modules (imported lazily; importing this package does not import diffusers):

- ``presets``: the ``tiny`` preset built from config (CPU tests, demos) and the ``sd15`` description.
- ``loading``: one loader for any diffusers Stable Diffusion folder (tiny or real) or hub id.
- ``conditioning``: the fixed mask -> ControlNet conditioning-image encoding.
- ``data``: reads a dataset folder's Parquet shards for training.
- ``training``: the shared accelerate loop (checkpoints, resume, validation grids).
- ``finetune``: VAE learning (tiny only) and DreamBooth instance tuning of the U-Net.
- ``controlnet``: ControlNet training on top of the tuned U-Net.
- ``prompts``: style prompt sets (template + vocabulary), sampled per copy seed; the sets shipped
  with the package are in ``prompt_sets/`` (package data).
- ``pipeline``: the ControlNet pipeline and one batched render call (inference only).
- ``engine``: ``ControlNetEngine`` (registry name ``controlnet``).
- ``chain``: ``ensure_models`` trains what a build needs, cached by data and settings hash.
- ``cli``: ``augment finetune`` and ``augment controlnet``, and this engine's ``augment build`` options.
"""
