"""Streaming (coverage across workers and ranks, shuffling, determinism, resume skip) and
geometric augmentation applied identically to original, copy and mask."""

import os
from pathlib import Path

import pytest
import torch

from styleswap.trainer.data import SliceStream, lateral_permutation, make_loader, open_dataset
from styleswap.trainer.augment import geometric_augment
from trainer_fixtures import write_dataset

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    return {
        "parquet": open_dataset(write_dataset(root / "pq", n_cases=4, slices=5, size=16, rows_per_group=3)),
        "hdf5": open_dataset(write_dataset(root / "h5", n_cases=4, slices=5, size=16, fmt="hdf5")),
        "one_group": open_dataset(write_dataset(root / "one", n_cases=2, slices=5, size=16, num_shards=1, rows_per_group=100)),
    }


def _ids(info, *, world=1, workers=0, epoch=0, seed=0, buffer=8, shuffle=True, skip=0, batch=2):
    out = []
    for rank in range(world):
        ds = SliceStream([info], seed=seed, rank=rank, world_size=world, buffer_size=buffer, shuffle=shuffle, skip_batches=skip, batch_size=batch)
        ds.set_epoch(epoch)
        for b in make_loader(ds, batch, workers):
            out += [(rank, s) for s in b["sample_id"]]
    return out


@pytest.mark.parametrize("name", ["parquet", "hdf5", "one_group"])
def test_two_workers_two_ranks_cover_every_slice_once(datasets, name):
    info = datasets[name]
    got = _ids(info, world=2, workers=2)
    ids = [s for _, s in got]
    assert len(ids) == info.num_rows and len(set(ids)) == info.num_rows
    # the two ranks get disjoint partitions of comparable size
    per_rank = [sum(1 for r, _ in got if r == k) for k in range(2)]
    assert min(per_rank) > 0


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads parent pids from /proc (Linux)")
def test_workers_start_from_the_fork_server_not_from_the_caller(datasets):
    # a fork of a trainer holding GBs of model state makes each page it then writes a copy-on-write
    # fault (seconds per epoch start); workers forked by the small server leave the caller alone
    it = iter(make_loader(SliceStream([datasets["parquet"]], seed=0), 2, 2))
    next(it)
    parents = {int(Path(f"/proc/{w.pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) for w in it._workers}
    assert len(parents) == 1 and os.getpid() not in parents
    del it


def test_shuffle_buffer_changes_order_not_coverage(datasets):
    info = datasets["parquet"]
    plain = [s for _, s in _ids(info, shuffle=False)]
    shuffled = [s for _, s in _ids(info, buffer=8)]
    assert sorted(plain) == sorted(shuffled) and plain != shuffled
    assert _ids(info, seed=3) == _ids(info, seed=3)  # same seed, same order
    assert _ids(info, epoch=0) != _ids(info, epoch=1)  # a new order per epoch


def test_skip_batches_continues_the_epoch(datasets):
    info = datasets["parquet"]
    full = _ids(info, batch=2)
    assert _ids(info, batch=2, skip=3) == full[6:]


def test_items_are_decoded_tensors_and_copies_are_drawn(datasets):
    info = datasets["parquet"]
    item = next(iter(SliceStream([info], seed=0)))
    assert item["image"].shape == (1, 16, 16) and item["image"].dtype == torch.float32
    assert item["mask"].dtype == torch.int64 and int(item["mask"].max()) < info.num_classes
    assert item["has_copy"] and not torch.equal(item["image"], item["augmented"])
    assert item["spacing"].tolist() == pytest.approx([1.5, 1.5, 3.0])


def test_rows_without_copies_fall_back_to_the_original(tmp_path):
    info = open_dataset(write_dataset(tmp_path / "d", n_cases=1, slices=2, size=16, copies=0))
    for item in SliceStream([info]):
        assert not item["has_copy"] and torch.equal(item["image"], item["augmented"])


def test_flip_moves_a_marker_identically_in_original_copy_and_mask():
    img = torch.zeros(2, 1, 8, 8)
    img[:, 0, 2, 1] = 1.0
    copy = img * 0.5
    mask = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    mask[:, 0, 2, 1] = 3  # kidney_left in the project's label set
    swap = lateral_permutation({"background": 0, "liver": 1, "kidney_right": 2, "kidney_left": 3, "spleen": 4}, 5)
    (a, c), m = geometric_augment([img, copy], mask, torch.Generator().manual_seed(0), flip_prob=1.0, rotate_deg=0, scale=0, swap=swap)
    for t, v in ((a, 1.0), (c, 0.5)):
        assert t[:, 0, 2, 6].tolist() == pytest.approx([v, v]) and t.sum().item() == pytest.approx(2 * v)
    assert m[:, 0, 2, 6].tolist() == [2, 2] and int((m > 0).sum()) == 2  # mirrored and relabelled


def test_random_affine_is_shared_and_keeps_mask_labels():
    torch.manual_seed(0)
    mask = torch.zeros(4, 1, 32, 32, dtype=torch.long)
    mask[:, :, 8:20, 6:18] = 1
    mask[:, :, 20:28, 18:26] = 2
    img = mask.float() / 2
    copy = 0.5 * img
    gen = torch.Generator().manual_seed(7)
    (a, c), m = geometric_augment([img, copy], mask, gen, flip_prob=0.5, rotate_deg=20, scale=0.15)
    assert set(m.unique().tolist()) <= {0, 1, 2}
    assert not torch.equal(m, mask)  # it did move
    agree = ((a * 2).round().long() == m).float().mean()
    assert agree > 0.97  # image and mask moved together (bilinear vs nearest edges aside)
    assert torch.allclose(c, 0.5 * a, atol=1e-6)  # the copy got the very same resampling


def test_lateral_permutation():
    perm = lateral_permutation({"background": 0, "kidney_right": 1, "kidney_left": 2, "liver": 3}, 4)
    assert perm.tolist() == [0, 2, 1, 3]


def test_items_carry_their_volume_stats_and_zscore_uses_them(tmp_path):
    from styleswap.trainer.model import normalize_input

    root = write_dataset(tmp_path / "d", n_cases=2, slices=3, size=16, volume_stats=True)
    info = open_dataset(root)
    items = list(SliceStream([info], shuffle=False))
    for it in items:
        st = info.volume_stats[it["case_id"]]
        assert it["stats"].tolist() == pytest.approx([st["mean"], st["std"]])
    # hand-computed: (x - mean) / std per image, each with its own volume's numbers
    x = torch.tensor([[[[0.5, 1.0]]], [[[0.2, 0.2]]]])
    stats = torch.tensor([[0.5, 0.25], [0.0, 0.1]])
    assert normalize_input(x, stats, "zscore").flatten().tolist() == pytest.approx([0.0, 2.0, 2.0, 2.0])
    assert torch.equal(normalize_input(x, stats, "unit"), x)
    plain = open_dataset(write_dataset(tmp_path / "p", n_cases=1, slices=1, size=16))
    assert next(iter(SliceStream([plain], shuffle=False)))["stats"].tolist() == [0.0, 1.0]
