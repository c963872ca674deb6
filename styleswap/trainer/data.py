"""Streaming access to contract-format dataset folders (Parquet first, HDF5 too).

A dataset folder is ``manifest.json`` + ``data/<split>-NNNNN-of-NNNNN.{parquet,h5}`` (see
``styleswap.contract``). `open_dataset` validates a folder cheaply (manifest, file metadata, one
decoded image) and `SliceStream` streams its rows as an ``IterableDataset``.

Streaming rules (why they hold):

* The unit of reading is a Parquet row group (or a block of `H5_BLOCK_ROWS` rows of an HDF5 shard),
  so memory is bounded by ``buffer_size`` rows plus one unit, whatever the dataset size.
* Each epoch the units are permuted with a generator seeded by ``(seed, epoch)`` (identical in every
  process), then dealt round-robin to the ``world_size * num_workers`` consumers (rank-major). When
  there are fewer units than consumers, every consumer reads every unit and keeps the rows whose
  position in the epoch order is congruent to its consumer id. Either way, each row goes to exactly
  one consumer per epoch: the consumers of a rank cover that rank's partition exactly once, and the
  ranks together cover the dataset exactly once.
* A shuffle buffer (seeded by ``(seed, epoch, consumer)``) reorders rows within a consumer. It holds
  raw (still PNG-encoded) rows; rows are decoded only when they leave the buffer.
* The copy drawn for a slice depends on ``(seed, epoch, sample_id)`` only, not on order or worker,
  so the pairs are the same however the data are partitioned or resumed. With ``min_qc_dice``
  (``train seg --min-qc-dice``) copies are drawn among those whose content check (``qc_dice``
  column) reached it; a row with none trains on its original, as a row without copies does.
* ``skip_batches`` (used on resume) drops, without decoding them, the rows of the first batches of an
  epoch. It assumes the DataLoader's round-robin over workers (batch ``b`` comes from worker
  ``b % num_workers``), which holds exactly until the first worker runs out of rows near the end of
  an epoch; see ``train.py``.
* `make_loader` starts workers from a fork server that has imported this module, not by forking
  the caller: a trainer holds GBs of compiled model and optimizer state, and after a plain fork every
  page it wrote became a copy-on-write fault (~4 s at each epoch start on 2 cores, which halved the
  speed of short epochs).
"""

from __future__ import annotations

import multiprocessing
import random
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from styleswap import contract
from styleswap.contract import Manifest, ShardReader
from styleswap.contract.reader import read_unit
from styleswap.errors import StyleSwapError
from styleswap.trainer.hub import resolve_dataset

#: Columns the trainer reads. The others (modality, prompts, seeds, engine) are not needed to
#: train, so a user's own folder without them still works.
REQUIRED_COLUMNS = ("sample_id", "case_id", "slice_index", "image", "mask", "augmented", "spacing")
#: HDF5 read unit = the Parquet writer's row group, so both formats shuffle identically.
H5_BLOCK_ROWS = contract.ROW_GROUP_SIZE
#: Per copy, the content check's Dice (optional: only datasets built with ``--qc-model`` have it).
QC_COLUMN = contract.QC_COLUMN


@dataclass(frozen=True)
class ShardInfo:
    path: Path
    split: str
    num_rows: int
    fmt: str
    #: (start, stop, row_group) row ranges read as one unit (Parquet row groups / HDF5 blocks;
    #: row_group is -1 for HDF5)
    units: tuple[tuple[int, int, int], ...]
    #: the shard holds the optional ``qc_dice`` column
    has_qc: bool = False


@dataclass
class DatasetInfo:
    """A validated dataset folder."""

    root: Path
    manifest: Manifest
    labels: dict[str, int]
    format: str
    shards: list[ShardInfo]
    image_size: tuple[int, int]
    modality: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    #: case_id -> {"mean", "std"} of the normalized volume (manifest ``volume_stats``), for the
    #: per-volume z-score of ``--input-norm zscore``; empty for datasets made before it existed
    volume_stats: dict[str, dict[str, float]] = field(default_factory=dict)
    #: style-intervened copies per row (manifest ``copies``, else the first row's)
    copies: int = 0

    @property
    def num_classes(self) -> int:
        """Number of output classes, background included (= ``len(labels)``)."""
        return len(self.labels)

    @property
    def num_rows(self) -> int:
        return sum(s.num_rows for s in self.shards)

    @property
    def label_names(self) -> list[str]:
        """Names ordered by label id."""
        return [n for n, _ in sorted(self.labels.items(), key=lambda kv: kv[1])]


def open_dataset(path: str | Path, split: str | None = None) -> DatasetInfo:
    """Validate a dataset folder and describe it.

    Args:
        path: folder holding ``manifest.json`` and ``data/``, or a Hub dataset ``hf://USER/NAME``
            (downloaded into the Hugging Face cache first, see `styleswap.trainer.hub`).
        split: keep only shards of this split (``None``: all shards).

    Raises:
        StyleSwapError: no manifest, unreadable manifest, no labels, missing shard file, missing
            column, no rows, or images of different sizes.
    """
    root = resolve_dataset(path)
    manifest = Manifest.read(root)  # the contract's rules: labels 0..n-1, a known format, shards
    entries = manifest.shards
    if split is not None:
        entries = [e for e in entries if e.split == split]
    shards: list[ShardInfo] = []
    for entry in entries:
        spath = manifest.shard_path(root, entry)
        if not spath.is_file():
            raise StyleSwapError(f"{spath}: shard listed in manifest.json is missing")
        reader = ShardReader(spath, manifest.format)
        missing = [c for c in REQUIRED_COLUMNS if c not in reader.columns]
        if missing:
            raise StyleSwapError(f"{spath}: missing column(s) {', '.join(missing)}")
        shards.append(ShardInfo(spath, entry.split, reader.num_rows, manifest.format, reader.units,
                                QC_COLUMN in reader.columns))
    info = DatasetInfo(root, manifest, dict(manifest.labels), manifest.format, shards, (0, 0), manifest.modality,
                       volume_stats=dict(manifest.volume_stats or {}))
    if info.num_rows == 0:
        what = f"split {split!r}" if split else "dataset"
        raise StyleSwapError(f"{root}: empty {what} (no rows in any shard)")
    first = next(s for s in shards if s.num_rows)
    row = next(iter(_read_unit(first, first.units[0])))
    img = _decode_cell(row["image"], first.path, row["sample_id"], "image")
    info.image_size = (int(img.shape[0]), int(img.shape[1]))
    info.copies = manifest.copies or len(row["augmented"])  # a folder written by hand may not say
    return info


def _read_unit(shard: ShardInfo, unit: tuple[int, int, int], columns: Sequence[str] = REQUIRED_COLUMNS
               ) -> Iterator[dict[str, Any]]:
    """Raw rows of one unit: PNG bytes (Parquet) or arrays (HDF5), not decoded."""
    for row in read_unit(shard.path, shard.fmt, unit, columns):
        row["shard"] = shard.path
        yield row


def _decode(value: bytes | np.ndarray) -> np.ndarray:
    return contract.decode_image(value)


def _decode_cell(value: bytes | np.ndarray, shard: Path, sid: str, what: str) -> np.ndarray:
    """A cell's pixels, or a one-line error naming the shard, the row and the cell."""
    try:
        return _decode(value)
    except Exception as e:  # noqa: BLE001 - PIL raises many types for a damaged PNG
        raise StyleSwapError(f"{shard}: row {sid}: cannot decode the {what} ({' '.join(str(e).split()) or type(e).__name__})") from None


def require_qc(d: DatasetInfo) -> None:
    """Refuse ``--min-qc-dice`` on a dataset whose shards lack the ``qc_dice`` column."""
    missing = next((s for s in d.shards if not s.has_qc), None)
    if missing is not None:
        raise StyleSwapError(f"{missing.path}: --min-qc-dice needs the {QC_COLUMN} column, which datasets built "
                             "with 'augment build --qc-model' have; this one has none")


def qc_filter(datasets: Sequence[DatasetInfo], min_qc_dice: float | None) -> str | None:
    """What ``--min-qc-dice`` skips in ``datasets`` (one line to report once at start), or None
    when it is off. Refuses data without the ``qc_dice`` column; reads that column only."""
    if min_qc_dice is None:
        return None
    copies = skipped = bare = 0
    for d in datasets:
        require_qc(d)
        for shard in d.shards:
            for unit in shard.units:
                for row in read_unit(shard.path, shard.fmt, unit, [QC_COLUMN]):
                    scores = row[QC_COLUMN]
                    weak = sum(1 for x in scores if x < min_qc_dice)
                    copies, skipped = copies + len(scores), skipped + weak
                    if scores and weak == len(scores):
                        bare += 1
    share = f" ({100 * skipped / copies:.1f} %)" if copies else ""
    return (f"--min-qc-dice {min_qc_dice}: skipping {skipped} of {copies} copies{share} whose qc_dice is below it; "
            f"{bare} rows have no copy left and train on their original")


def _seed_of(*parts: int | str) -> int:
    """A stable 63-bit seed from ints and strings (``hash()`` of str is salted per process)."""
    h = 0
    for p in parts:
        b = str(p).encode()
        h = (h * 1_000_003 + zlib.crc32(b)) % (2**63 - 1)
    return h


class SliceStream(IterableDataset):
    """Rows of one or more dataset folders as tensors.

    Each item is a dict::

        image      (1, H, W) float32 in [0, 1]   original slice
        augmented  (K, H, W) float32 in [0, 1]   ``copies`` (K) copies drawn by (seed, epoch, sample_id),
                                                 different ones while the row has enough; the
                                                 original itself when the row has no copies
        mask       (1, H, W) int64               label ids < num_classes
        has_copy   bool
        stats      (2,) float32                  mean and std of the slice's volume (``volume_stats``;
                                                 (0, 1) when the manifest has none)
        sample_id, case_id (str), slice_index (int), spacing (3,) float32

    Args:
        datasets: validated folders (same labels and image size).
        shuffle: permute units per epoch and use the shuffle buffer.
        buffer_size: rows held by the shuffle buffer (1 disables it).
        seed: base seed; the order is a function of (seed, epoch, rank, world_size, workers).
        rank, world_size: this process and the number of processes.
        num_classes: masks must hold ids below this (default: the datasets' class count).
        with_copies: draw copies per row (off for evaluation, where ``augmented`` is the image).
        copies: how many copies to draw per row (``gin-ipa`` wants 3).
        min_qc_dice: draw only copies whose ``qc_dice`` is at least this (datasets built with the
            content check; refused on others). None: every copy.
        skip_batches, batch_size: on resume, skip the first ``skip_batches`` batches of the epoch.
    """

    def __init__(
        self,
        datasets: Sequence[DatasetInfo],
        *,
        shuffle: bool = True,
        buffer_size: int = 256,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_classes: int | None = None,
        with_copies: bool = True,
        skip_batches: int = 0,
        batch_size: int = 1,
        copies: int = 1,
        min_qc_dice: float | None = None,
    ) -> None:
        super().__init__()
        if not datasets:
            raise StyleSwapError("no dataset given")
        for d in datasets if min_qc_dice is not None else ():
            require_qc(d)
        first = datasets[0]
        for d in datasets[1:]:
            if d.labels != first.labels:
                raise StyleSwapError(f"{d.root}: labels {d.labels} differ from {first.root}'s {first.labels}")
            if d.image_size != first.image_size:
                raise StyleSwapError(f"{d.root}: image size {d.image_size} differs from {first.root}'s {first.image_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.datasets = list(datasets)
        self.shuffle = shuffle
        self.buffer_size = max(1, int(buffer_size))
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.num_classes = int(num_classes if num_classes is not None else first.num_classes)
        self.image_size = first.image_size
        self.with_copies = with_copies
        self.copies = max(1, int(copies))
        self.skip_batches = int(skip_batches)
        self.batch_size = int(batch_size)
        self.min_qc_dice = min_qc_dice
        self._columns = REQUIRED_COLUMNS + ((QC_COLUMN,) if min_qc_dice is not None else ())
        self.epoch = 0
        self._units = [(s, u) for d in self.datasets for s in d.shards for u in s.units]
        self._stats = {s.path: d.volume_stats for d in self.datasets for s in d.shards}

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's order; call before each ``iter(DataLoader)``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:  # rows of the whole dataset (all ranks), for progress only
        return sum(d.num_rows for d in self.datasets)

    # -- partitioning -------------------------------------------------------------------------
    def _consumer(self) -> tuple[int, int, int, int]:
        wi = get_worker_info()
        wid, nw = (wi.id, wi.num_workers) if wi is not None else (0, 1)
        return self.rank * nw + wid, self.world_size * nw, wid, nw

    def _raw_rows(self, consumer: int, consumers: int) -> Iterator[dict[str, Any]]:
        units = list(self._units)
        if self.shuffle:
            random.Random(_seed_of(self.seed, self.epoch, "units")).shuffle(units)
        if len(units) >= consumers:
            for shard, unit in units[consumer::consumers]:
                yield from _read_unit(shard, unit, self._columns)
        else:  # too few units to deal out: stride over rows instead
            k = 0
            for shard, unit in units:
                for row in _read_unit(shard, unit, self._columns):
                    if k % consumers == consumer:
                        yield row
                    k += 1

    def _buffered(self, rows: Iterator[dict[str, Any]], rng: random.Random) -> Iterator[dict[str, Any]]:
        if not self.shuffle or self.buffer_size <= 1:
            yield from rows
            return
        buf: list[dict[str, Any]] = []
        for row in rows:
            if len(buf) < self.buffer_size:
                buf.append(row)
                continue
            j = rng.randrange(len(buf))
            buf[j], row = row, buf[j]
            yield row
        rng.shuffle(buf)
        yield from buf

    def __iter__(self) -> Iterator[dict[str, Any]]:
        consumer, consumers, wid, nw = self._consumer()
        rng = random.Random(_seed_of(self.seed, self.epoch, "buffer", consumer, consumers))
        rows = self._buffered(self._raw_rows(consumer, consumers), rng)
        # batches b < skip_batches with b % nw == wid came from this worker
        skip = max(0, -(-(self.skip_batches - wid) // nw)) * self.batch_size
        for row in rows:
            if skip:
                skip -= 1
                continue
            yield self._decode_row(row)

    # -- decoding -----------------------------------------------------------------------------
    def _decode_row(self, row: dict[str, Any]) -> dict[str, Any]:
        shard, sid = row["shard"], row["sample_id"]
        image = _decode_cell(row["image"], shard, sid, "image")
        mask = _decode_cell(row["mask"], shard, sid, "mask")
        if image.shape != self.image_size or mask.shape != self.image_size:
            raise StyleSwapError(
                f"{shard}: {sid} has image {image.shape} / mask {mask.shape}, expected {self.image_size} "
                "(input size must be uniform)"
            )
        top = int(mask.max()) if mask.size else 0
        if top >= self.num_classes:
            raise StyleSwapError(
                f"{shard}: mask of {sid} holds label id {top}, outside the {self.num_classes} classes "
                "(ids 0..{})".format(self.num_classes - 1)
            )
        copies = row["augmented"]
        eligible = list(range(len(copies)))  # the copies to draw from: all, or those that passed the check
        if self.min_qc_dice is not None:
            eligible = [i for i, d in enumerate(row[QC_COLUMN]) if d >= self.min_qc_dice]
        has_copy = self.with_copies and len(eligible) > 0
        if has_copy:
            rng = random.Random(_seed_of(self.seed, self.epoch, "copy", sid))
            n = len(eligible)
            picks = [rng.randrange(n)] if self.copies == 1 else (rng.sample(range(n), self.copies) if n >= self.copies
                                                                  else [rng.randrange(n) for _ in range(self.copies)])
            augs = []
            for pick in (eligible[p] for p in picks):
                aug = _decode_cell(copies[pick], shard, sid, f"copy {pick}")
                if aug.shape != self.image_size:
                    raise StyleSwapError(f"{shard}: copy {pick} of {sid} has shape {aug.shape}, expected {self.image_size}")
                augs.append(contract.to_unit_float(aug))
        spacing = [float(x) for x in (row["spacing"] or [])][:3]
        spacing += [1.0] * (3 - len(spacing))
        img_t = torch.from_numpy(contract.to_unit_float(image))[None]
        vs = self._stats.get(shard, {}).get(row["case_id"])
        return {
            "image": img_t,
            "augmented": torch.from_numpy(np.stack(augs)) if has_copy else img_t.expand(self.copies, -1, -1).clone(),
            "mask": torch.from_numpy(mask.astype(np.int64))[None],
            "has_copy": has_copy,
            "sample_id": sid,
            "case_id": row["case_id"],
            "slice_index": row["slice_index"],
            "spacing": torch.tensor(spacing, dtype=torch.float32),
            "stats": torch.tensor([vs["mean"], vs["std"]] if vs else [0.0, 1.0], dtype=torch.float32),
        }


def worker_context() -> multiprocessing.context.BaseContext | None:
    """The fork-server context for DataLoader workers (None where the platform has none)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return None
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])  # the server imports torch and the readers once, not each worker
    return ctx


def make_loader(stream: SliceStream, batch_size: int, workers: int) -> DataLoader:
    """A DataLoader over ``stream`` whose ``workers`` start from the fork server (see module notes)."""
    return DataLoader(stream, batch_size=batch_size, num_workers=workers, pin_memory=torch.cuda.is_available(),
                      multiprocessing_context=worker_context() if workers > 0 else None)  # fmt: skip


def lateral_permutation(labels: dict[str, int], num_classes: int) -> torch.Tensor:
    """Label-id permutation that swaps left/right pairs (``kidney_left`` <-> ``kidney_right``).

    A horizontal flip mirrors anatomy; masks are relabelled so that "right" stays on the image side
    where real right organs appear, and flip test-time augmentation swaps the channels back.
    Shape: (num_classes,) int64; identity where a name has no partner.
    """
    perm = torch.arange(num_classes)
    for name, lid in labels.items():
        for a, b in (("left", "right"), ("right", "left")):
            if a in name:
                partner = labels.get(name.replace(a, b))
                if partner is not None and lid < num_classes and partner < num_classes:
                    perm[lid] = partner
    return perm
