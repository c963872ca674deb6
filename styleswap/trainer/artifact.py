"""A model folder is an artifact: ``model.safetensors`` + one ``config.json`` that says everything
`train predict` needs on another machine.

config.json keys (beyond the network's, see `model`)::

    labels          {"background": 0, "liver": 1, ...}   the ids the output volumes hold
    preprocessing   {"name": "styleswap.volumes.preprocess", "version": 1, "size": 192,
                     "intensity": "percentile", "input_norm": "unit", "modality": "CT", ...}
    training_data   [{"id": "out/ct-gin" or "hf://...", "manifest_sha256": "...", "rows": N,
                      "engine": "gin", "copies": 4}]
    recipe          the `train seg` settings (loss, steps, augmentation, seed, ...)

`describe_training` builds those keys from the training folders' manifests (the trainer reads the
*format*, never the generator); `ModelArtifact` opens a folder, a run, a checkpoint or ``hf://``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

from styleswap import contract
from styleswap.contract import Manifest
from styleswap.errors import StyleSwapError
from styleswap.trainer.hub import resolve_model_repo
from styleswap.trainer.model import CONFIG_NAME, WEIGHTS_NAME, SegNet, load_model, read_config, resolve_model_dir
from styleswap.volumes.preprocess import Preprocessing

def _rule_name(rule: Any) -> str:
    """The intensity rule's name from its manifest description (``percentile`` carries no name)."""
    return str(rule.get("name", "percentile")) if isinstance(rule, dict) else "percentile"


def preprocessing_of(manifest: Manifest, image_size: tuple[int, int], input_norm: str = "unit") -> Preprocessing:
    """The preprocessing a dataset folder's slices went through, as a model records it."""
    src = manifest.origin
    if image_size[0] != image_size[1]:
        raise StyleSwapError(f"slices of {image_size[0]} x {image_size[1]} pixels: predict needs square slices")
    rule = _rule_name((src.get("normalization") or {}).get("rule"))
    modality = manifest.modality or None
    return Preprocessing(size=int(image_size[0]), intensity=rule, input_norm=input_norm, modality=modality)


def describe_training(infos: list, cfg: Any) -> dict[str, Any]:
    """The artifact keys of config.json for a model trained on ``infos`` (`DatasetInfo`) with ``cfg``
    (`TrainConfig`): preprocessing, training data ids and hashes, recipe."""
    settings = asdict(cfg) if is_dataclass(cfg) else dict(cfg)
    first = infos[0]
    pre = preprocessing_of(first.manifest, first.image_size, str(settings.get("input_norm") or "unit"))
    data = []
    for info, spec in zip(infos, settings.get("data") or [str(i.root) for i in infos]):
        mpath = Path(info.root) / contract.MANIFEST_NAME
        data.append({
            "id": str(spec),
            "manifest_sha256": contract.sha256_file(mpath) if mpath.is_file() else None,
            "rows": info.num_rows,
            "engine": info.manifest.engine.name if info.manifest.engine else None,
            "copies": info.manifest.copies,
            "modality": info.manifest.modality or None,
        })
    # how it was trained: the run's recipe (what a resume must share) and its length, not paths or machine settings
    recipe = {k: v for k, v in cfg.recipe().items() if k not in ("data", "val", "extra")} | {"steps": cfg.steps}
    return {"preprocessing": pre.to_config(), "training_data": data, "recipe": recipe}


@dataclass
class ModelArtifact:
    """An opened model folder: where it is, what it says, and the hash of its weights."""

    spec: str
    folder: Path
    config: dict[str, Any]
    sha256: str
    preprocessing: Preprocessing

    @property
    def labels(self) -> dict[str, int]:
        labels = self.config.get("labels") or {}
        if not labels:  # a model saved without its label map: ids only
            labels = {"background": 0, **{f"class_{i}": i for i in range(1, int(self.config["num_classes"]))}}
        return {str(k): int(v) for k, v in labels.items()}

    @property
    def organs(self) -> list[str]:
        """Label names ordered by id, background left out."""
        return [n for n, i in sorted(self.labels.items(), key=lambda kv: kv[1]) if i != 0]

    def load(self, device: str = "cpu") -> SegNet:
        return load_model(self.folder, map_location="cpu").to(device).eval()

    def describe(self) -> dict[str, Any]:
        return {"id": self.spec, "folder": str(self.folder), "weights_sha256": self.sha256,
                "preprocessing": self.preprocessing.to_config(), "labels": self.labels,
                "training_data": self.config.get("training_data"), "recipe": self.config.get("recipe")}


def open_model(spec: str | Path) -> ModelArtifact:
    """A run folder (best/, then final/), ``best/``, ``final/``, ``checkpoints/step-N``, a model
    folder, or ``hf://NAMESPACE/NAME[@REVISION]``. Pickle weights are refused, never opened."""
    folder = resolve_model_dir(resolve_model_repo(spec))
    config = read_config(folder)
    pre = Preprocessing.from_config(config, str(folder / CONFIG_NAME))
    return ModelArtifact(str(spec), folder, config, contract.sha256_file(folder / WEIGHTS_NAME), pre)
