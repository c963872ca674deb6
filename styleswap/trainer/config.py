"""Every setting of a training run, declared once: name, default, help, command-line flags.

`TrainConfig` is what `train_segmentation` takes and what ``train_config.json`` records; ``train
seg`` builds its options from these fields (`styleswap.trainer.cli`), so a default or a help text
is never written twice. `TrainConfig.validate` refuses an unknown choice or an impossible number
with a one-line `StyleSwapError` before anything is read or written.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from styleswap.errors import StyleSwapError
from styleswap.networks import ARCHS  # the network definition (shared floor) owns its architectures
from styleswap.volumes.intensity import INPUT_NORMS  # the neutral layer owns what a network reads

#: The training methods (``--loss``); see `styleswap.trainer.methods`.
LOSSES = ("erm", "dice", "dice+infonce", "gin-ipa", "gin-ipa-fresh", "gin-ipa-released", "slaug", "slaug+copies")
LR_SCHEDULES = ("constant", "cosine", "poly")
INTENSITY_AUGS = ("standard", "organ", "bias", "lla")
MIXED_PRECISION = ("no", "fp16", "bf16")


def option(default: Any = None, help: str = "", *flags: str, cli: bool = True, metavar: str | None = None, **kw: Any) -> Any:
    """A dataclass field that also describes its command-line option (``flags`` default to
    ``--name-with-dashes``; a bool gets ``--name/--no-name``)."""
    meta = {"help": help, "flags": flags, "cli": cli, "metavar": metavar}
    if "default_factory" in kw:
        return field(default_factory=kw["default_factory"], metadata=meta)
    return field(default=default, metadata=meta)


REQUIRED = object()  # marks the options a command line must give


@dataclass
class TrainConfig:
    # data
    data: list[str] = option(REQUIRED, "Dataset folder, or hf://USER/NAME (repeatable).", "--data", metavar="DIR")
    out: str = option(REQUIRED, "Run folder to write: new, empty, or a run of this tool (see --resume, --overwrite).", "--out", metavar="DIR")
    val: str | None = option(None, "Validation dataset folder (source modality): best/ keeps the best mean Dice; the target modality is never used to choose.", metavar="DIR")
    split: str | None = option(None, "Use only shards of this split from --data.")
    val_split: str | None = option(None, "Use only this split of --val (e.g. the 'validation' split that "
                                   "'augment ingest --split' writes).")
    min_qc_dice: float | None = option(None, "Draw only copies whose content check reached this Dice (the qc_dice column "
                                       "of 'augment build --qc-model'); a slice with none left trains on its original.",
                                       metavar="X")
    # method and network
    loss: str = option("dice+infonce", "Training method: erm (originals only) | dice (Dice+CE on original and copy) | "
                       "dice+infonce (+ PatchNCE between their features) | gin-ipa (three copies, two blended by a random "
                       "smooth field, KL consistency; Ouyang et al.) | gin-ipa-fresh (gin-ipa on three GIN images of "
                       "the original drawn every step, as its paper; reads no copies) | gin-ipa-released (gin-ipa-fresh with GIN "
                       "and the blending field as the authors' released code: on the z-scored slice, unclipped; needs "
                       "--input-norm zscore and no --intensity-aug) | slaug (global and class-wise "
                       "location-scale augmentation with saliency-balanced fusion, on the fly; Su et al.) | slaug+copies (slaug, each "
                       "slice's images made from its original or, half the time, one of its copies).")
    arch: str = option("unet", "unet (MONAI UNet) | basicunet | effb2 (FlexibleUNet with a randomly initialised "
                       "EfficientNet-B2 encoder, the peers' network; 11 M parameters).")
    channels: int = option(16, "Width of the first level (doubles per level).", "--channels", "--width")
    depth: int = option(4, "Number of resolution levels.")
    num_res_units: int = option(2, "Residual units per block (unet).", "--res-units")
    input_norm: str = option("unit", "What the network reads: unit (slices in [0, 1]) | zscore (each slice minus its "
                             "volume's mean, over its std: the GIN-IPA / SLAug protocol; needs data ingested with this version).")
    # optimisation
    steps: int = option(1000, "Optimizer steps.")
    batch_size: int = option(16, "Source slices per step and process (the copies come on top).")
    lr: float = option(1e-3, "AdamW learning rate.")
    lr_schedule: str = option("constant", "constant | cosine (to 0 at --steps) | poly (nnU-Net's (1-t)^0.9).")
    warmup_steps: int = option(0, "Linear learning-rate warm-up steps.")
    weight_decay: float = option(1e-4, "AdamW weight decay.")
    ema: float = option(0.0, "Exponential moving average of the weights with this decay per step (e.g. 0.999); "
                        "validation, best/ and final/ then use the averaged network. 0: off.")
    seed: int = option(0, "Seed for init, data order, copies, augmentation.")
    # augmentation
    intensity_aug: str = option("none", "Comma-separated: standard (per-image gamma, contrast, brightness, noise on every "
                                "image), organ (on copies, a random intensity map per organ, so organ-to-organ contrast is "
                                "no cue), bias (on copies, a smooth random shading field), lla (on half the copies, SLAug's class-wise "
                                "location-scale remap: every organ and the background through its own random curve); or none.")
    flip_prob: float = option(0.5, "Horizontal flip probability (left/right labels swapped).")
    rotate_deg: float = option(15.0, "Max rotation, degrees.", "--rotate")
    scale: float = option(0.1, "Max relative zoom.")
    shear_deg: float = option(0.0, "Max shear, degrees.", "--shear")
    shift: float = option(0.0, "Max translation, as a fraction of the image size.")
    elastic: float = option(0.0, "Elastic deformation: max displacement in pixels of a smooth random field (0: off).")
    # losses
    nce_weight: float = option(1.0, "Weight of the PatchNCE term.")
    nce_temperature: float = option(0.07, "PatchNCE temperature.")
    nce_patches: int = option(256, "Locations sampled per layer.")
    nce_layers: str | None = option(None, "Encoder depths, e.g. '0,1,2' (default: all).")
    nce_mlp: bool = option(True, "CUT's projection MLP.")
    nce_negatives: str = option("image", "image (CUT: other locations of the same image) | batch (the same location in the "
                                "other images of the batch, as the Style Swap paper's code; with --nce-layers 3 "
                                "--nce-temperature 0.2 that is its InfoNCE).")
    consistency_weight: float = option(10.0, "gin-ipa, gin-ipa-fresh, gin-ipa-released: weight of the KL consistency between the three "
                                       "views (the paper's 10).")
    # running
    workers: int = option(2, "DataLoader workers per process.")
    buffer_size: int = option(256, "Shuffle buffer (rows).")
    log_every: int = option(10, "Steps between metrics.csv rows.")
    val_every: int = option(200, "Steps between validations.")
    checkpoint_every: int = option(200, "Steps between checkpoints.")
    checkpoints_total_limit: int | None = option(2, "Checkpoints kept (0: all).")
    mixed_precision: str = option("no", "no | fp16 | bf16 (GPU).")
    compile: bool = option(False, "torch.compile the network's forward (about 1.6x faster per step on CPU at 192 px, "
                           "~20 s to compile).")
    resume: str | None = option(None, "'latest' or a checkpoint folder: continue this run (same data, recipe and seed; "
                                "--steps may be raised).")
    overwrite: bool = option(False, "Replace the run already in --out (its checkpoints, best/ and final/).", "--overwrite")
    progress: bool = option(True, "Progress bar.")
    val_batch_size: int = option(32, cli=False)
    extra: dict[str, Any] = option(cli=False, default_factory=dict)

    def validate(self) -> None:
        """One-line errors for settings that cannot run, before anything is read or written."""
        for name, choices in (("loss", LOSSES), ("lr_schedule", LR_SCHEDULES), ("input_norm", INPUT_NORMS),
                              ("arch", ARCHS), ("mixed_precision", MIXED_PRECISION), ("nce_negatives", ("image", "batch"))):  # fmt: skip
            value = getattr(self, name)
            if value not in choices:
                raise StyleSwapError(f"unknown {flag(name)} {value!r} (choose from {', '.join(choices)})")
        self.intensity_augs()
        if self.steps < 1 or self.batch_size < 1:
            raise StyleSwapError("--steps and --batch-size must be >= 1")
        if not self.data:
            raise StyleSwapError("no --data folder given")
        for name in ("flip_prob",):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise StyleSwapError(f"{flag(name)} must be within [0, 1], got {getattr(self, name)}")
        for name in ("rotate_deg", "scale", "shear_deg", "shift", "elastic", "nce_weight", "consistency_weight"):
            if getattr(self, name) < 0:
                raise StyleSwapError(f"{flag(name)} must be >= 0, got {getattr(self, name)}")
        if self.min_qc_dice is not None and not 0.0 <= self.min_qc_dice <= 1.0:
            raise StyleSwapError(f"--min-qc-dice must be within [0, 1], got {self.min_qc_dice}")
        if not 0.0 <= self.ema < 1.0:
            raise StyleSwapError(f"--ema must be within [0, 1), got {self.ema}")
        if self.loss == "gin-ipa-released" and (self.input_norm != "zscore" or self.intensity_augs()):
            # its GIN works on z-scored slices and leaves them unclipped; the jitter and the copy maps clip to [0, 1]
            raise StyleSwapError("--loss gin-ipa-released needs --input-norm zscore and --intensity-aug none "
                                 f"(got {self.input_norm} and {self.intensity_aug})")
        if self.resume and self.overwrite:
            raise StyleSwapError("--resume continues the run in --out and --overwrite replaces it: give one of them")

    def intensity_augs(self) -> tuple[str, ...]:
        return parse_intensity_augs(self.intensity_aug)

    #: Settings that change neither what a run computes nor its result: a resume may change them.
    RUNTIME_ONLY = ("out", "steps", "workers", "buffer_size", "log_every", "val_every", "checkpoint_every",
                    "checkpoints_total_limit", "resume", "overwrite", "progress", "val_batch_size", "compile")

    def recipe(self) -> dict[str, Any]:
        """What a resumed run must share with the run it continues (everything but `RUNTIME_ONLY`)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in self.RUNTIME_ONLY}


def parse_intensity_augs(spec: str) -> tuple[str, ...]:
    """``"standard,organ"`` -> ("standard", "organ"); ``"none"`` or "" -> (). Unknown names are
    one-line errors."""
    names = tuple(n.strip() for n in spec.replace("+", ",").split(",") if n.strip() and n.strip() != "none")
    bad = [n for n in names if n not in INTENSITY_AUGS]
    if bad:
        raise StyleSwapError(f"--intensity-aug: unknown intensity augmentation {bad[0]!r} "
                             f"(choose from none, {', '.join(INTENSITY_AUGS)}, comma-separated)")
    return names


def flag(name: str) -> str:
    """The main command-line flag of field ``name``."""
    f = next(f for f in fields(TrainConfig) if f.name == name)
    return (f.metadata.get("flags") or (f"--{name.replace('_', '-')}",))[0]
