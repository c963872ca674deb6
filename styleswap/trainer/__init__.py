"""The trainer half: streams contract-format dataset folders and trains/evaluates segmentation.

It depends on the dataset *format* only (``styleswap.contract``), never on the generator or the
diffusion stack, so it trains on any dataset folder with the right columns.

Public API::

    open_dataset(path)                 -> DatasetInfo (manifest, labels, shards, image size)
    SliceStream(datasets, ...)         IterableDataset of slices (sharded over workers and ranks)
    build_model(config)                -> SegNet (MONAI network exposing encoder features)
    PatchNCELoss, SegLoss              losses
    TrainConfig, train_segmentation    training loop (accelerate)
    evaluate_model, dice_per_organ     3D per-organ evaluation
"""

from styleswap.trainer.data import DatasetInfo, SliceStream, open_dataset
from styleswap.trainer.evaluate import dice_per_organ, evaluate_model
from styleswap.trainer.losses import PatchNCELoss, SegLoss
from styleswap.trainer.model import SegNet, build_model
from styleswap.trainer.train import TrainConfig, train_segmentation

__all__ = [
    "DatasetInfo",
    "SliceStream",
    "open_dataset",
    "dice_per_organ",
    "evaluate_model",
    "PatchNCELoss",
    "SegLoss",
    "SegNet",
    "build_model",
    "TrainConfig",
    "train_segmentation",
]
