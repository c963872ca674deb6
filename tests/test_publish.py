"""Publishing and interoperability: the card, `augment push` (through a fake HfApi), `hf://` data,
`augment convert` Parquet <-> HDF5, and the MONAI helper."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from cli_util import augment
from styleswap import contract
from styleswap.generator import dataset, push

TOKEN = "hf_SECRETtoken123"
SMALL = ["--size", "32", "--keep-empty", "0", "--no-preview", "--engine", "gin", "--copies", "2"]


def build(out: Path, *extra: str, source: str = "phantom:1") -> Path:
    code, _, err = augment(["build", "--source", source, "--out", str(out), *SMALL, *extra])
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def licensed(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("pub") / "ds", "--rows-per-shard", "10", "--license", "cc-by-4.0")


@pytest.fixture(scope="module")
def unlicensed(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("pub") / "nolic", "--rows-per-shard", "100")


@pytest.fixture(scope="module")
def two_units(tmp_path_factory) -> Path:
    """A shard of 40 rows: two Parquet row groups (32 + 8), so unit boundaries matter."""
    return build(tmp_path_factory.mktemp("pub") / "big", "--rows-per-shard", "40", source="phantom:2")


def front_matter(folder: Path) -> dict:
    text = (folder / "README.md").read_text()
    head, sep, _ = text[4:].partition("\n---\n")
    assert text.startswith("---\n") and sep
    return yaml.safe_load(head)


class FakeApi:
    """Records what `push_dataset` asks of the Hub."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kw}))

    def create_branch(self, repo_id, **kw):
        self.calls.append(("create_branch", {"repo_id": repo_id, **kw}))

    def create_commit(self, **kw):
        self.calls.append(("create_commit", kw))


@pytest.fixture
def fake_api(monkeypatch) -> FakeApi:
    api = FakeApi()
    monkeypatch.setattr("styleswap.hub_publish.default_api", lambda: api)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return api


# --- the card --------------------------------------------------------------------------------------


def test_card_front_matter_matches_the_shards(licensed):
    import datasets
    import pyarrow.parquet as pq

    meta = front_matter(licensed)
    m = json.loads((licensed / "manifest.json").read_text())
    assert meta["license"] == "cc-by-4.0" and meta["task_categories"] == ["image-segmentation"]
    assert {"medical", "synthetic", "ct"} <= set(meta["tags"]) and meta["size_categories"] == ["n<1K"]
    assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}]
    shard = licensed / m["shards"][0]["path"]
    assert datasets.Features._from_yaml_list(meta["dataset_info"]["features"]) == datasets.Features.from_arrow_schema(pq.read_schema(shard))
    assert meta["dataset_info"]["splits"] == [{"name": "train", "num_bytes": sum(e["bytes"] for e in m["shards"]), "num_examples": m["counts"]["slices"]}]
    body = (licensed / "README.md").read_text()
    for needle in ("| liver | 1 |", "gin", "augment build", "load_dataset(", "train seg --data hf://", "Build seed: 0"):
        assert needle in body, needle


def test_load_dataset_reads_the_folder_through_its_card(licensed, tmp_path):
    import datasets
    from PIL import Image

    ds = datasets.load_dataset(str(licensed), split="train", cache_dir=str(tmp_path / "cache"))
    rows = {r["sample_id"]: r for r in dataset.iter_rows(licensed)}
    assert len(ds) == len(rows)
    for row in ds.select(range(3)):
        assert isinstance(row["image"], Image.Image) and row["image"].size == (32, 32)
        assert len(row["augmented"]) == 2 and all(isinstance(a, Image.Image) for a in row["augmented"])
        np.testing.assert_array_equal(np.asarray(row["mask"]), rows[row["sample_id"]]["mask"])
    assert set(np.unique(np.asarray(ds[len(ds) // 2]["mask"]))) <= set(contract.DEFAULT_LABELS.values())


# --- push ------------------------------------------------------------------------------------------


def expected_repo_files(folder: Path) -> list[str]:
    m = json.loads((folder / "manifest.json").read_text())
    return [e["path"] for e in m["shards"]] + ["manifest.json", "README.md"]


def test_dry_run_lists_exactly_the_files_and_sends_nothing(licensed, fake_api):
    before = (licensed / "README.md").read_bytes()
    code, out, err = augment(["push", str(licensed), "--repo-id", "alice/phantom-gin", "--dry-run"])
    assert code == 0, err
    listed = [line.split(" -> ")[1].rsplit(" (", 1)[0] for line in out.splitlines() if " -> " in line]
    assert listed == expected_repo_files(licensed)
    assert f"{licensed}/data/train-00000-of-00003.parquet -> data/train-00000-of-00003.parquet (" in out
    assert "license: cc-by-4.0" in out and "# alice/phantom-gin" in out
    assert fake_api.calls == [] and (licensed / "README.md").read_bytes() == before


def test_push_commits_the_files_and_never_exposes_the_token(licensed, fake_api, tmp_path, caplog):
    from huggingface_hub import CommitOperationAdd

    folder = tmp_path / "copy"
    shutil.copytree(licensed, folder)
    caplog.set_level(logging.DEBUG)
    code, out, err = augment(["push", str(folder), "--repo-id", "alice/phantom-gin", "--private",
                              "--revision", "v1", "--message", "first"])
    assert code == 0, err
    names = [c[0] for c in fake_api.calls]
    assert names == ["create_repo", "create_branch", "create_commit"]
    repo, branch, commit = (c[1] for c in fake_api.calls)
    assert repo == {"repo_id": "alice/phantom-gin", "repo_type": "dataset", "private": True, "exist_ok": True}
    assert branch["branch"] == "v1" and branch["repo_type"] == "dataset"
    assert commit["repo_type"] == "dataset" and commit["revision"] == "v1" and commit["commit_message"] == "first"
    ops = commit["operations"]
    assert all(isinstance(op, CommitOperationAdd) for op in ops)
    assert [op.path_in_repo for op in ops] == expected_repo_files(folder)
    card = next(op for op in ops if op.path_in_repo == "README.md").path_or_fileobj
    assert b"license: cc-by-4.0" in card and (folder / "README.md").read_bytes() == card  # folder = repo
    assert dataset.verify(folder)["rows"] > 0
    # the token is nowhere: output, logs, files
    assert TOKEN not in out + err and TOKEN not in caplog.text
    for path in folder.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_push_takes_the_license_given_at_push_time(unlicensed, fake_api):
    ops = push.push_dataset(unlicensed, "alice/x", license="other", dry_run=True)
    assert [op.path_in_repo for op in ops] == expected_repo_files(unlicensed) and fake_api.calls == []


def _flip_byte(folder: Path) -> None:
    shard = sorted((folder / "data").iterdir())[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "case, args, message",
    [
        ("no license", ["--repo-id", "alice/x"], "no license"),
        ("bad repo id", ["--repo-id", "justaname", "--license", "mit"], "NAMESPACE/NAME"),
        ("nested repo id", ["--repo-id", "a/b/c", "--license", "mit"], "NAMESPACE/NAME"),
        ("bad license id", ["--repo-id", "alice/x", "--license", "CC BY"], "license"),
        ("verify fails", ["--repo-id", "alice/x", "--license", "mit"], "fails augment verify"),
    ],
)
def test_refusals_are_one_line_and_send_nothing(unlicensed, fake_api, tmp_path, case, args, message):
    folder = tmp_path / "d"
    shutil.copytree(unlicensed, folder)
    if case == "verify fails":
        _flip_byte(folder)
    code, out, err = augment(["push", str(folder), *args])
    assert code == 2, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert fake_api.calls == []


def test_hub_errors_become_one_line(licensed, monkeypatch):
    class Failing(FakeApi):
        def create_repo(self, repo_id, **kw):
            raise RuntimeError("401 Unauthorized\nsecond line")

    monkeypatch.setattr("styleswap.hub_publish.default_api", lambda: Failing())
    monkeypatch.setattr(push.card, "write_card", lambda *a, **k: pytest.fail("card written after a failed push"))
    code, _, err = augment(["push", str(licensed), "--repo-id", "alice/x"])
    assert code == 2 and err == "error: push to alice/x failed: RuntimeError: 401 Unauthorized\n"


# --- hf:// as --data -------------------------------------------------------------------------------


def test_trainer_opens_a_hub_dataset_through_snapshot_download(licensed, monkeypatch):
    import huggingface_hub

    from styleswap.errors import StyleSwapError
    from styleswap.trainer.data import open_dataset

    calls = []

    def fake_download(repo_id, **kw):
        calls.append((repo_id, kw))
        return str(licensed)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    info = open_dataset("hf://alice/phantom-gin")
    assert info.root == licensed and info.num_rows == json.loads((licensed / "manifest.json").read_text())["counts"]["slices"]
    open_dataset(Path("hf://datasets/alice/phantom-gin@v1"))  # as typer hands it over: "hf:/..."
    assert calls == [("alice/phantom-gin", {"repo_type": "dataset", "revision": None}),
                     ("alice/phantom-gin", {"repo_type": "dataset", "revision": "v1"})]
    with pytest.raises(StyleSwapError, match="hf://NAMESPACE/NAME"):
        open_dataset("hf://justaname")


# --- convert ---------------------------------------------------------------------------------------


def test_parquet_hdf5_parquet_round_trip_is_lossless(two_units, tmp_path):
    h5, back = tmp_path / "h5", tmp_path / "back"
    code, _, err = augment(["convert", str(two_units), "--to", "hdf5", "--out", str(h5)])
    assert code == 0, err
    code, _, err = augment(["convert", str(h5), "--to", "parquet", "--out", str(back)])
    assert code == 0, err
    src, mh, mb = (json.loads((p / "manifest.json").read_text()) for p in (two_units, h5, back))
    assert [e["num_rows"] for e in mh["shards"]] == [e["num_rows"] for e in src["shards"]] == [40, len(list(dataset.iter_rows(two_units))) - 40]
    assert mh["format"] == "hdf5" and mh["converted_from"]["format"] == "parquet"
    assert mb["converted_from"]["shards"] == [{"path": e["path"], "sha256": e["sha256"]} for e in mh["shards"]]
    assert front_matter(h5)["configs"][0]["data_files"][0]["path"] == "data/train-*.h5"
    for folder in (h5, back):
        dataset.verify(folder)
    # same bytes as the build wrote, hence every field of every row
    assert [e["sha256"] for e in mb["shards"]] == [e["sha256"] for e in src["shards"]]
    for a, b in zip(dataset.iter_rows(two_units), dataset.iter_rows(h5), strict=True):
        assert a.keys() == b.keys()
        for k in a:
            if k == "augmented":
                assert len(a[k]) == len(b[k]) and all(np.array_equal(x, y) for x, y in zip(a[k], b[k]))
            elif isinstance(a[k], np.ndarray):
                assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
            else:
                assert a[k] == b[k], k


def test_trainer_yields_identical_batches_from_parquet_and_hdf5(two_units, tmp_path):
    import torch
    from torch.utils.data import DataLoader

    from styleswap.trainer.data import SliceStream, open_dataset

    h5 = tmp_path / "h5"
    assert augment(["convert", str(two_units), "--to", "hdf5", "--out", str(h5)])[0] == 0
    pq_info, h5_info = open_dataset(two_units), open_dataset(h5)
    assert [s.units for s in pq_info.shards] != [] and [[u[:2] for u in s.units] for s in pq_info.shards] == [[u[:2] for u in s.units] for s in h5_info.shards]

    def batches(info, epoch):
        stream = SliceStream([info], seed=5, buffer_size=8)
        stream.set_epoch(epoch)
        return list(DataLoader(stream, batch_size=4))

    for epoch in (0, 1):
        a, b = batches(pq_info, epoch), batches(h5_info, epoch)
        assert len(a) == len(b) > 0
        for x, y in zip(a, b):
            assert x["sample_id"] == y["sample_id"]
            for k in ("image", "augmented", "mask", "spacing", "has_copy"):
                assert torch.equal(x[k], y[k]), k


def test_convert_refusals(tmp_path, two_units):
    code, _, err = augment(["convert", str(two_units), "--to", "parquet", "--out", str(tmp_path / "x")])
    assert code == 2 and "already parquet" in err
    code, _, err = augment(["convert", str(two_units), "--to", "zarr", "--out", str(tmp_path / "x")])
    assert code == 2 and "--to must be one of" in err
    assert not (tmp_path / "x").exists()


def test_varying_copies_cannot_become_hdf5(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from styleswap.contract import sha256_file

    src = build(tmp_path / "src", "--rows-per-shard", "100")
    m = json.loads((src / "manifest.json").read_text())
    shard = src / m["shards"][0]["path"]
    table = pq.read_table(shard)
    aug = table.column("augmented").to_pylist()
    aug[1] = aug[1][:1]  # one row with a single copy
    table = table.set_column(table.schema.get_field_index("augmented"), table.schema.field("augmented"),
                             pa.array(aug, type=table.schema.field("augmented").type))
    pq.write_table(table, shard)
    m["shards"][0].update(sha256=sha256_file(shard), bytes=shard.stat().st_size)
    (src / "manifest.json").write_text(json.dumps(m))
    code, _, err = augment(["convert", str(src), "--to", "hdf5", "--out", str(tmp_path / "h5")])
    assert code == 2 and err.count("\n") == 1 and "HDF5 needs fixed shapes" in err
    assert not (tmp_path / "h5").exists()


# --- MONAI -----------------------------------------------------------------------------------------


def test_monai_dataset_of_dicts(licensed):
    from monai.data import Dataset
    from monai.transforms import Compose, RandFlipd, ScaleIntensityd

    from styleswap.trainer.monai_io import to_monai_dicts

    items = to_monai_dicts(licensed)
    rows = {r["sample_id"]: r for r in dataset.iter_rows(licensed)}
    assert len(items) == len(rows)
    first = items[0]
    assert first["image"].shape == (1, 32, 32) and first["image"].dtype == np.float32
    assert first["label"].shape == (1, 32, 32) and first["label"].dtype == np.uint8
    assert first["augmented"].shape == (2, 32, 32)
    flip = Compose([RandFlipd(keys=["image", "label"], prob=1.0, spatial_axis=1), ScaleIntensityd(keys="image")])
    ds = Dataset(items, transform=flip)
    assert len(ds) == len(rows)
    for i in (0, len(ds) - 1):
        out = ds[i]
        label = np.asarray(out["label"])
        assert label.shape == (1, 32, 32)
        np.testing.assert_array_equal(label[0], rows[items[i]["sample_id"]]["mask"][:, ::-1])
        assert np.asarray(out["image"]).dtype == np.float32 and float(np.asarray(out["image"]).max()) <= 1.0
