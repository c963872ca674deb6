"""``ensure_models``: what ``augment build`` calls for engine ``controlnet`` before rendering.

It trains what is missing, in order (tiny preset only: build it, learn its VAE; then DreamBooth,
then the ControlNet), and reuses what exists. Every stage lives in
``<cache_dir>/<stage>-<key>/`` where ``key`` hashes the dataset (its manifest's per-shard sha256s),
the stage's settings and the key of the stage before, so new data or new settings train anew and
an unchanged recipe trains nothing. A stage counts as done only when its info JSON is written
(last); an interrupted stage resumes from its latest checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from styleswap.errors import StyleSwapError

from .data import data_hash
from .finetune import DEFAULT_INSTANCE_PROMPT

#: Settings consumed here (training); everything else is passed on to ControlNetEngine.
TRAIN_DEFAULTS: dict[str, Any] = {
    "preset": None,  # "tiny", "sd15" or "sd15-random"; default: tiny without base_model, else sd15
    "instance_prompt": DEFAULT_INSTANCE_PROMPT,
    "conditioning": "mask",
    "train_seed": 0,
    "train_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "gradient_checkpointing": False,
    "train_mixed_precision": "no",
    "vae_steps": 400,
    "vae_learning_rate": 1e-3,
    "finetune_steps": 400,
    "finetune_learning_rate": 1e-4,
    "controlnet_steps": 400,
    "controlnet_learning_rate": 1e-4,
    "checkpointing_steps": 200,
    "checkpoints_total_limit": 2,
}


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _base_identity(base_model: str) -> str:
    p = Path(base_model)
    if p.is_dir():
        h = hashlib.sha256(str(p.resolve()).encode())
        for f in ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json"):
            if (p / f).is_file():
                h.update((p / f).read_bytes())
        return h.hexdigest()
    return str(base_model)


def split_settings(settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    train = {k: settings.get(k, v) for k, v in TRAIN_DEFAULTS.items()}
    engine = {k: v for k, v in settings.items() if k not in TRAIN_DEFAULTS}
    return train, engine


def ensure_models(settings: dict, data_dir: Path, cache_dir: Path) -> dict:
    """Train (or reuse) the models engine ``controlnet`` needs; return the engine's settings."""
    from .controlnet import train_controlnet
    from .finetune import finetune, learn_vae
    from .presets import build_sd15_random, build_tiny, get_preset
    from .training import TrainArgs

    tr, engine = split_settings(dict(settings))
    if engine.get("unet") and engine.get("controlnet") and engine.get("base_model"):
        return engine  # models given explicitly: nothing to train
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    dhash = data_hash(Path(data_dir))
    base_model = engine.get("base_model")
    preset = get_preset(tr["preset"] or ("sd15" if base_model else "tiny"))
    resolution = engine.get("resolution")
    if resolution is not None and int(resolution) % 8:
        raise StyleSwapError(f"engine 'controlnet': resolution {resolution} is not divisible by 8")

    def args(folder: Path, steps: int, lr: float) -> TrainArgs:
        return TrainArgs(
            output_dir=folder, max_train_steps=int(steps), learning_rate=float(lr),
            train_batch_size=int(tr["train_batch_size"]), gradient_accumulation_steps=int(tr["gradient_accumulation_steps"]),
            gradient_checkpointing=bool(tr["gradient_checkpointing"]), mixed_precision=tr["train_mixed_precision"],
            checkpointing_steps=int(tr["checkpointing_steps"]), checkpoints_total_limit=tr["checkpoints_total_limit"],
            resume_from_checkpoint="latest", seed=int(tr["train_seed"]), device=engine.get("device"), progress=True,
        )

    if preset.name == "sd15-random" and not base_model:  # random weights: renders are noise (tests, measurements)
        base_model = str(cache_dir / f"sd15-random-{_key('sd15-random', tr['train_seed'])}")
        if not (Path(base_model) / "styleswap_preset.json").is_file():
            build_sd15_random(base_model, seed=int(tr["train_seed"]))
    elif preset.from_config and not base_model:
        res = int(resolution or preset.resolution)
        tiny = cache_dir / f"tiny-{_key('tiny', res, tr['train_seed'])}"
        if not (tiny / "styleswap_preset.json").is_file():
            build_tiny(tiny, resolution=res, seed=int(tr["train_seed"]))
        vkey = _key(dhash, tiny.name, tr["vae_steps"], tr["vae_learning_rate"], tr["train_batch_size"], tr["train_seed"])
        base = cache_dir / f"base-{vkey}"
        if not (base / "styleswap_preset.json").is_file():
            learn_vae(tiny, data_dir, base, args(base, tr["vae_steps"], tr["vae_learning_rate"]))
        base_model = str(base)
    base_id = _base_identity(str(base_model))
    common = (tr["train_batch_size"], tr["gradient_accumulation_steps"], tr["train_seed"], tr["instance_prompt"], resolution)
    ft = cache_dir / f"finetune-{_key(dhash, base_id, tr['finetune_steps'], tr['finetune_learning_rate'], common)}"
    if not (ft / "finetune.json").is_file():
        finetune(base_model, data_dir, ft, args(ft, tr["finetune_steps"], tr["finetune_learning_rate"]),
                 instance_prompt=tr["instance_prompt"], resolution=resolution)
    cn = cache_dir / f"controlnet-{_key(ft.name, tr['controlnet_steps'], tr['controlnet_learning_rate'], tr['conditioning'], common)}"
    if not (cn / "controlnet.json").is_file():
        train_controlnet(base_model, ft / "unet", data_dir, cn, args(cn, tr["controlnet_steps"], tr["controlnet_learning_rate"]),
                         instance_prompt=tr["instance_prompt"], conditioning=tr["conditioning"], resolution=resolution,
                         prompt_set=engine.get("prompt_set", "default"))
    engine.update(base_model=str(base_model), unet=str(ft / "unet"), controlnet=str(cn), conditioning=tr["conditioning"])
    return engine
