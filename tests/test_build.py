"""The build pipeline end to end on the phantom: format, determinism, content, verify, refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cli_util import augment
from styleswap import contract
from styleswap.generator import dataset

COMMON = ["--size", "48", "--keep-empty", "0", "--rows-per-shard", "7", "--no-preview", "--seed", "3"]


def build(out: Path, *extra: str, source: str = "phantom:2") -> dict:
    code, _, err = augment(["build", "--source", source, "--out", str(out), *COMMON, *extra])
    assert code == 0, err
    return json.loads((out / "manifest.json").read_text())


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "data").iterdir())}


def rows_by_id(folder: Path) -> dict[str, dict]:
    return {r["sample_id"]: r for r in dataset.iter_rows(folder)}


@pytest.fixture(scope="module")
def gin_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("b") / "gin"
    build(out, "--engine", "gin", "--copies", "2")
    return out


def test_manifest_records_shards_rows_and_hashes(gin_dataset):
    m = json.loads((gin_dataset / "manifest.json").read_text())
    assert m["tool"] == "styleswap" and m["engine"]["name"] == "gin" and m["copies"] == 2
    names = [e["path"] for e in m["shards"]]
    total = len(names)
    # Hub-native names, every shard but the last full (7 rows), counts add up.
    assert names == [f"data/train-{i:05d}-of-{total:05d}.parquet" for i in range(total)]
    assert all(e["num_rows"] == 7 for e in m["shards"][:-1]) and 1 <= m["shards"][-1]["num_rows"] <= 7
    assert sum(e["num_rows"] for e in m["shards"]) == m["counts"]["slices"] == m["splits"]["train"]["num_rows"]
    assert m["image_size"] == [48, 48]
    assert not (gin_dataset / ".partial").exists()
    # the hashes (taken from the staged shards' receipts) and sizes are those of the final files
    for e in m["shards"]:
        path = gin_dataset / e["path"]
        assert e["sha256"] == contract.sha256_file(path) and e["bytes"] == path.stat().st_size
    # slices per label, counted by hand from the masks
    by_hand: dict[str, int] = {}
    names = {v: k for k, v in m["labels"].items()}
    for row in dataset.iter_rows(gin_dataset, columns=["mask"]):
        for v in set(np.asarray(row["mask"]).ravel().tolist()) - {0}:
            by_hand[names[v]] = by_hand.get(names[v], 0) + 1
    assert by_hand and m["counts"]["slices_with_label"] == by_hand


def test_parquet_loads_with_pyarrow_and_datasets(gin_dataset):
    files = sorted(str(p) for p in (gin_dataset / "data").glob("*.parquet"))
    table = pq.read_table(files[0])
    assert table.column_names == list(contract.COLUMNS)
    assert table.schema.field("slice_index").type == "int32"

    import datasets
    from PIL import Image

    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    row = ds[0]
    assert isinstance(row["image"], Image.Image) and row["image"].size == (48, 48)
    assert len(row["augmented"]) == 2 and isinstance(row["augmented"][0], Image.Image)
    # The mask keeps its label ids exactly (no palette, no RGB, no rescaling).
    ours = rows_by_id(gin_dataset)[row["sample_id"]]["mask"]
    np.testing.assert_array_equal(np.asarray(row["mask"]), ours)
    assert set(np.unique(ours)) <= {0, 1, 2, 3, 4}
    assert len(row["seeds"]) == 2 and row["engine"] == "gin" and len(row["spacing"]) == 3


def test_copies_keep_the_mask_and_change_intensities(gin_dataset, tmp_path):
    originals = tmp_path / "orig"
    build(originals, "--engine", "none", "--copies", "0")
    orig, gin = rows_by_id(originals), rows_by_id(gin_dataset)
    assert orig.keys() == gin.keys()
    diffs = []
    for sid, r in gin.items():
        np.testing.assert_array_equal(r["mask"], orig[sid]["mask"])
        np.testing.assert_array_equal(r["image"], orig[sid]["image"])
        assert orig[sid]["augmented"] == []
        for a in r["augmented"]:
            assert a.shape == r["image"].shape and a.dtype == np.uint8
            diffs.append(np.abs(a.astype(float) - r["image"]).mean())
    # A real intervention: GIN mixes its output with the input by a random weight, so a few
    # copies stay close to the original (~40% over 200 seeds), most move by several grey levels.
    diffs = np.asarray(diffs)
    assert np.median(diffs) > 5 and (diffs > 2).mean() > 0.5, diffs


def test_seeds_derive_from_build_seed_sample_and_copy(gin_dataset):
    from styleswap.contract import derive_seed

    for sid, r in list(rows_by_id(gin_dataset).items())[:5]:
        assert r["seeds"] == [derive_seed(3, sid, c) for c in range(2)]


def test_same_seed_same_bytes_other_seed_other_pixels(gin_dataset, tmp_path):
    again = tmp_path / "again"
    build(again, "--engine", "gin", "--copies", "2")
    assert shard_bytes(again) == shard_bytes(gin_dataset)

    other = tmp_path / "other"
    code, _, err = augment(["build", "--source", "phantom:2", "--out", str(other), *COMMON[:-2], "--seed", "4",
                            "--engine", "gin", "--copies", "2"])
    assert code == 0, err
    a, b = rows_by_id(gin_dataset), rows_by_id(other)
    common = sorted(a.keys() & b.keys())
    assert common, "the two builds should share slices"
    assert any(not np.array_equal(a[s]["augmented"][0], b[s]["augmented"][0]) for s in common)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["parquet", "hdf5"])
def test_output_bytes_do_not_depend_on_workers(tmp_path, fmt):
    one = build(tmp_path / "w1", "--engine", "bezier", "--copies", "2", "--format", fmt, "--workers", "1")
    two = build(tmp_path / "w2", "--engine", "bezier", "--copies", "2", "--format", fmt, "--workers", "2")
    assert [e["sha256"] for e in one["shards"]] == [e["sha256"] for e in two["shards"]]
    assert shard_bytes(tmp_path / "w1") == shard_bytes(tmp_path / "w2")


@pytest.mark.slow
def test_workers_decode_an_ingested_source_and_the_bytes_stay_those_of_one_worker(tmp_path):
    """From an ingested dataset, worker processes get the source's PNG bytes and decode them
    themselves, and send back bytes only: the shards are the one-worker build's, and the
    originals are the source's stored bytes."""
    ingested = tmp_path / "ing"
    code, _, err = augment(["ingest", "phantom:2", "--out", str(ingested), *COMMON])
    assert code == 0, err
    one = build(tmp_path / "w1", "--engine", "gin", "--copies", "2", "--workers", "1", source=str(ingested))
    two = build(tmp_path / "w2", "--engine", "gin", "--copies", "2", "--workers", "2", source=str(ingested))
    assert [e["sha256"] for e in one["shards"]] == [e["sha256"] for e in two["shards"]]
    def stored_images(folder: Path) -> dict[str, bytes]:
        rows = [r for p in sorted((folder / "data").glob("*.parquet"))
                for r in pq.read_table(p, columns=["sample_id", "image"]).to_pylist()]
        return {r["sample_id"]: r["image"]["bytes"] for r in rows}

    built = stored_images(tmp_path / "w2")
    assert built and built.items() <= stored_images(ingested).items()


def test_an_undecoded_source_slice_decodes_to_the_decoded_one(tmp_path):
    ingested = tmp_path / "ing"
    code, _, err = augment(["ingest", "phantom:1", "--out", str(ingested), *COMMON])
    assert code == 0, err
    eager = list(dataset.iter_source_slices(ingested))
    lazy = list(dataset.iter_source_slices(ingested, decode=False))
    assert len(lazy) == len(eager) > 0 and all(s.image is None and s.mask is None for s in lazy)
    for a, b in zip(eager, lazy):
        b.decoded()
        assert a.sample_id == b.sample_id and a.spacing == b.spacing and a.png == b.png
        assert np.array_equal(a.image, b.image) and a.image.dtype == b.image.dtype
        assert np.array_equal(a.mask, b.mask) and a.mask.any() == b.mask.any()


def test_hdf5_carries_the_same_fields(tmp_path, gin_dataset):
    import h5py

    out = tmp_path / "h5"
    m = build(out, "--engine", "gin", "--copies", "2", "--format", "hdf5")
    first = out / m["shards"][0]["path"]
    assert first.suffix == ".h5"
    with h5py.File(first, "r") as f:
        n = f["image"].shape[0]
        assert f["image"].shape == (n, 48, 48) and f["image"].dtype == np.uint8
        assert f["augmented"].shape == (n, 2, 48, 48)
        assert f["seeds"].shape == (n, 2) and f["seeds"].dtype == np.int64
        assert f["spacing"].shape == (n, 3)
        sid = f["sample_id"][0].decode()
        prompts = [p.decode() for p in f["prompts"][0]]
    ref = rows_by_id(gin_dataset)[sid]
    h5 = rows_by_id(out)[sid]
    for key in ("image", "mask"):
        np.testing.assert_array_equal(h5[key], ref[key])
    for x, y in zip(h5["augmented"], ref["augmented"]):
        np.testing.assert_array_equal(x, y)
    assert prompts == ref["prompts"] and h5["seeds"] == ref["seeds"]


def test_verify_passes_then_catches_a_flipped_byte(tmp_path, gin_dataset):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(gin_dataset, copy)
    code, out, _ = augment(["verify", str(copy)])
    assert code == 0 and "ok" in out
    victim = sorted((copy / "data").glob("*.parquet"))[1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    code, _, err = augment(["verify", str(copy)])
    assert code == 1
    assert victim.name in err and "sha256" in err


def test_verify_catches_a_missing_shard_and_a_wrong_row_count(tmp_path, gin_dataset):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(gin_dataset, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["shards"][0]["num_rows"] += 1
    (copy / "manifest.json").write_text(json.dumps(m))
    code, _, err = augment(["verify", str(copy)])
    assert code == 1 and "rows" in err and Path(m["shards"][0]["path"]).name in err
    (copy / m["shards"][-1]["path"]).unlink()
    m["shards"][0]["num_rows"] -= 1
    (copy / "manifest.json").write_text(json.dumps(m))
    code, _, err = augment(["verify", str(copy)])
    assert code == 1 and "missing" in err


def test_refuses_a_folder_that_is_not_a_dataset(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    code, _, err = augment(["build", "--source", "phantom:1", "--out", str(out), *COMMON])
    assert code == 2
    assert err.count("\n") == 1 and "not a styleswap dataset" in err and str(out) in err
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_refuses_to_replace_a_dataset_without_overwrite(tmp_path):
    out = tmp_path / "d"
    first = build(out, "--engine", "bezier", "--copies", "1")
    code, _, err = augment(["build", "--source", "phantom:1", "--out", str(out), *COMMON, "--engine", "bezier", "--copies", "1"])
    assert code == 2 and "--overwrite" in err
    assert json.loads((out / "manifest.json").read_text()) == first
    second = build(out, "--engine", "bezier", "--copies", "1", "--overwrite", source="phantom:1")
    assert second["counts"]["cases"] == 1
    assert dataset.verify(out)["rows"] == second["counts"]["slices"]


def test_failed_build_leaves_nothing_behind(tmp_path):
    out = tmp_path / "never"
    code, _, err = augment(["build", "--source", str(tmp_path / "nothing-here"), "--out", str(out), *COMMON])
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize(
    "recipe, message",
    [
        ("source: phantom\nout: x\ncopies: 2\nsharding: 5\n", "unknown keys sharding"),
        ("- a list\n", "mapping"),
        ("source: [unclosed\n", "not valid YAML"),
        ("engine: none\ncopies: 2\nout: x\n", "originals only"),
        ("engine: gin\ncopies: 1\nout: x\nformat: zip\n", "format must be one of"),
        ("engine: warp\ncopies: 1\nout: x\n", "unknown engine 'warp'"),
        ("engine: gin\nengine_settings: {layers: 0}\nout: x\n", "layers"),
    ],
)
def test_bad_recipes_get_one_line_errors(tmp_path, recipe, message):
    path = tmp_path / "r.yaml"
    path.write_text(recipe)
    code, _, err = augment(["build", str(path), "--out", str(tmp_path / "o")])
    assert code == 2, err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_demo_recipe_is_valid():
    from styleswap.generator.recipe import load_recipe, make_config

    root = Path(__file__).resolve().parents[1]
    cfg = make_config(load_recipe(root / "manifests" / "demo.yaml"), {})
    cfg.validate()
    assert cfg.source.startswith("phantom") and cfg.engine == "gin" and cfg.copies > 0


def test_preview_command_draws_a_row_per_slice(tmp_path, gin_dataset):
    from PIL import Image

    small, big = tmp_path / "two.png", tmp_path / "four.png"
    assert augment(["preview", str(gin_dataset), "--out", str(small), "--rows", "2"])[0] == 0
    assert augment(["preview", str(gin_dataset), "--out", str(big), "--rows", "4"])[0] == 0
    (w2, h2), (w4, h4) = Image.open(small).size, Image.open(big).size
    assert w2 == w4 and h4 > h2  # same columns (original, mask, 2 copies), more rows
    code, _, err = augment(["preview", str(tmp_path), "--out", str(tmp_path / "x.png")])
    assert code == 2 and "not a dataset folder" in err


def test_no_style_swap_flag_reaches_the_engine_settings(tmp_path):
    # gin has no such setting: the refusal proves the flag became engine setting style_swap=False.
    code, _, err = augment(["build", "--source", "phantom:1", "--out", str(tmp_path / "o"), "--engine", "gin",
                            "--no-style-swap", *COMMON])
    assert code == 2 and "style_swap" in err and err.count("\n") == 1


def test_volume_stats_are_recorded_and_carried_through_builds(tmp_path, gin_dataset):
    """Each case's normalized mean and std reach manifest.json at ingest and survive a build on top."""
    raw = json.loads((gin_dataset / "manifest.json").read_text())
    per_case = raw["source"]["normalization"]["per_case"]
    assert set(raw["volume_stats"]) == set(per_case) and len(per_case) == 2
    for case, st in raw["volume_stats"].items():
        assert st == {"mean": per_case[case]["mean"], "std": per_case[case]["std"]}
        assert 0.0 < st["mean"] < 1.0 and 0.0 < st["std"] < 0.5
    ingested = tmp_path / "ing"
    code, _, err = augment(["ingest", "phantom:2", "--out", str(ingested), *COMMON, "--intensity", "standard"])
    assert code == 0, err
    src = json.loads((ingested / "manifest.json").read_text())
    assert src["recipe"]["intensity"] == "standard" and src["volume_stats"]
    built = build(tmp_path / "built", "--engine", "bezier", "--copies", "1", source=str(ingested))
    assert built["volume_stats"] == src["volume_stats"]


def test_workers_default_to_the_cores_only_for_cheap_engines_with_enough_copies(monkeypatch):
    from styleswap.generator import plan
    from styleswap.generator.engines.base import engine_class

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(12)), raising=False)
    shards = [plan.ShardSpec("train", 0, 256), plan.ShardSpec("train", 1, 100)]  # 356 rows
    gin, bezier, none = engine_class("gin"), engine_class("bezier"), engine_class("none")
    assert plan.default_workers(gin, shards, 4) == plan.MAX_DEFAULT_WORKERS == 8  # 1424 copies, 12 cores
    assert plan.default_workers(bezier, shards, 3) == 8  # 1068 copies
    assert plan.default_workers(gin, shards, 2) == 1  # 712 copies: start-up would cost more than it saves
    assert plan.default_workers(none, shards, 0) == 1  # ingest: nothing to render
    assert plan.default_workers(gin, None, 8) == 1  # a raw source, preprocessed by this process as it streams
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert plan.default_workers(gin, shards, 4) == 2
    assert plan.default_workers(engine_class("controlnet"), shards, 8) == 1  # a diffusion model per process


def test_the_manifest_records_the_workers_chosen_and_an_explicit_count_wins(tmp_path):
    ingested = tmp_path / "ing"
    code, _, err = augment(["ingest", "phantom:2", "--out", str(ingested), *COMMON])
    assert code == 0, err
    chosen = build(tmp_path / "auto", "--engine", "bezier", "--copies", "1", source=str(ingested))
    assert chosen["recipe"]["workers"] == 1  # a few dozen copies: one process
    given = build(tmp_path / "two", "--engine", "bezier", "--copies", "1", "--workers", "2", source=str(ingested))
    assert given["recipe"]["workers"] == 2
    assert shard_bytes(tmp_path / "auto") == shard_bytes(tmp_path / "two")
