"""The contract's types: `Manifest` (read, validate, write), `ShardReader`, `derive_seed`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cli_util import augment
from styleswap import contract
from styleswap.contract import Manifest, ShardReader
from styleswap.errors import StyleSwapError
from trainer_fixtures import write_dataset

COMMON = ["--size", "32", "--keep-empty", "0", "--rows-per-shard", "20", "--no-preview", "--seed", "1"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("built")
    out = {}
    for fmt in ("parquet", "hdf5"):
        code, _, err = augment(["build", "--source", "phantom:2", "--out", str(root / fmt), "--engine", "bezier",
                                "-k", "2", "--format", fmt, *COMMON])
        assert code == 0, err
        out[fmt] = root / fmt
    return out


def test_a_built_manifest_reads_and_writes_back_byte_for_byte(built, tmp_path):
    m = Manifest.read(built["parquet"])
    assert m.tool == "styleswap" and m.engine.name == "bezier" and m.copies == 2 and m.image_size == (32, 32)
    assert m.counts.slices == m.num_rows == sum(m.split_rows().values()) and m.counts.cases == 2
    assert set(m.volume_stats) == {"phantom_000", "phantom_001"} and m.modality == "CT"
    m.write(tmp_path)
    assert (tmp_path / "manifest.json").read_bytes() == (built["parquet"] / "manifest.json").read_bytes()


def test_a_hand_made_manifest_reads_with_the_same_rules(tmp_path):
    """A folder made without StyleSwap: engine named as a string, no tool, unknown keys kept."""
    folder = write_dataset(tmp_path / "d", n_cases=1, slices=3, size=16)
    m = Manifest.read(folder)
    assert m.tool is None and m.engine.name == "synthetic" and m.extra == {"size": 16}
    assert m.modality == "" and m.volume_stats is None and m.counts is None
    with pytest.raises(StyleSwapError, match=r"manifest\.json: not a manifest written by styleswap$"):
        m.require_styleswap(folder / "manifest.json")


def test_modality_follows_the_source_through_builds_on_ingested_data(tmp_path):
    raw = {"labels": {"background": 0, "liver": 1}, "shards": [],
           "source": {"layout": "styleswap-dataset", "upstream": {"layout": "nnunet", "modality": "MRI"}}}
    assert Manifest.from_json(raw).modality == "MRI"


BAD = [
    ("[1, 2]", "a manifest must be a JSON object"),
    ('{"shards": []}', "no 'labels' mapping (name -> id)"),
    ('{"labels": {"background": 0, "liver": 2}}', "label ids must be 0..1, got [0, 2]"),
    ('{"labels": {"background": "0"}}', "label ids must be integers, got {'background': '0'}"),
    ('{"labels": {"background": 0}, "format": "zarr"}', "unknown format 'zarr' (expected one of ('parquet', 'hdf5'))"),
    ('{"labels": {"background": 0}, "shards": [{"split": "train"}]}', "shards[0] needs a 'path' and a row count"),
    ('{"labels": {"background": 0}, "shards": [{"path": "a", "num_rows": -1}]}', "shards[0] needs a 'path'"),
    ('{"labels": {"background": 0}, "image_size": 32}', "image_size must be [height, width], got 32"),
    ('{"labels": {"background": 0}, "copies": "2"}', "'copies' must be an integer, got '2'"),
    ('{"labels": {"background": 0}, "recipe": []}', "'recipe' must be a JSON object, got []"),
    ('{"labels": {"background": 0}, "counts": {"rows": 3}}', "'counts' is not a valid Counts record"),
    ('{"labels": ', "unreadable manifest (Expecting value"),
]


@pytest.mark.parametrize("text, problem", BAD, ids=[b[1].split(" (")[0][:30] for b in BAD])
def test_bad_manifests_are_one_line_errors_naming_the_file(tmp_path, text, problem):
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(StyleSwapError) as info:
        Manifest.read(tmp_path)
    msg = str(info.value)
    assert msg.startswith(f"{tmp_path / 'manifest.json'}: {problem}") and "\n" not in msg, msg


def test_no_manifest(tmp_path):
    with pytest.raises(StyleSwapError, match=r": not a dataset folder \(no manifest\.json\)$"):
        Manifest.read(tmp_path)


def test_locate_finds_rows_of_a_split_across_shards():
    m = Manifest.from_json({"labels": {"background": 0}, "shards": [
        {"path": "a", "split": "train", "num_rows": 5}, {"path": "b", "split": "test", "num_rows": 4},
        {"path": "c", "split": "train", "num_rows": 5}]})
    assert m.split_rows() == {"train": 10, "test": 4}
    assert [(e.path, lo, hi) for e, lo, hi in m.locate("train", 3, 8)] == [("a", 3, 5), ("c", 0, 3)]
    assert [(e.path, lo, hi) for e, lo, hi in m.locate("test", 1, 2)] == [("b", 1, 2)]


@pytest.mark.parametrize("fmt", ["parquet", "hdf5"])
def test_the_reader_reads_ranges_units_and_whole_shards_alike(built, fmt):
    m = Manifest.read(built[fmt])
    reader = ShardReader(m.shard_path(built[fmt], m.shards[0]))
    assert reader.num_rows == m.shards[0].num_rows == 20 == contract.count_rows(reader.path)
    assert [u[:2] for u in reader.units] == [(0, 20)]  # one row group of <= 32 rows (or one HDF5 block)
    whole = list(reader.iter_rows())
    part = [contract.decode_row(r) for r in reader.read(5, 12)]
    assert [r["sample_id"] for r in part] == [r["sample_id"] for r in whole[5:12]]
    for a, b in zip(part, whole[5:12]):
        assert np.array_equal(a["image"], b["image"]) and len(a["augmented"]) == 2
        assert all(np.array_equal(x, y) for x, y in zip(a["augmented"], b["augmented"]))


def test_both_formats_read_back_the_same_rows(built):
    pq, h5 = (list(ShardReader(Manifest.read(built[f]).shard_path(built[f], Manifest.read(built[f]).shards[0]))
                   .iter_rows()) for f in ("parquet", "hdf5"))
    assert len(pq) == len(h5) == 20
    for a, b in zip(pq, h5):
        assert a.keys() == b.keys() == set(contract.COLUMNS)
        for k in a:
            if k == "augmented":
                assert all(np.array_equal(x, y) for x, y in zip(a[k], b[k]))
            elif isinstance(a[k], np.ndarray):
                assert np.array_equal(a[k], b[k]), k
            else:
                assert a[k] == b[k], k


def test_the_copy_seed_is_pinned():
    """Changing the seed function changes every dataset's bytes: it must not change by accident."""
    assert contract.derive_seed(3, "case_00/0007", 1) == contract.derive_seed(3, "case_00/0007", 1)
    assert [contract.derive_seed(0, "phantom_000/0012", c) for c in range(2)] == [7457405784902403540, 877666412709141811]


@pytest.mark.parametrize("qc", [False, True])
def test_the_shard_schema_and_card_features_are_those_datasets_would_write(qc):
    """Built without importing `datasets`, yet identical to what `datasets` makes of the features,
    with and without the optional qc_dice column; the reference is spelled out here, in datasets' terms."""
    import datasets

    features = datasets.Features({
        "sample_id": datasets.Value("string"), "case_id": datasets.Value("string"),
        "slice_index": datasets.Value("int32"), "modality": datasets.Value("string"),
        "image": datasets.Image(), "mask": datasets.Image(), "augmented": datasets.Sequence(datasets.Image()),
        "prompts": datasets.Sequence(datasets.Value("string")), "seeds": datasets.Sequence(datasets.Value("int64")),
        "engine": datasets.Value("string"), "spacing": datasets.Sequence(datasets.Value("float32")),
        **({contract.QC_COLUMN: datasets.Sequence(datasets.Value("float32"))} if qc else {}),
    })
    assert contract.hf_features(qc=qc) == features
    assert contract.arrow_schema(qc=qc).equals(features.arrow_schema, check_metadata=True)
    assert contract.card_features(qc=qc) == features._to_yaml_list()
    assert (contract.QC_COLUMN in contract.arrow_schema(qc=qc).names) == qc


@pytest.mark.parametrize("dtype, top", [(np.uint8, 255), (np.uint16, 65535)])
def test_png_codec_round_trip_and_any_reader_reads_it(dtype, top):
    """The contract's PNG writer: lossless, deterministic, standard (PIL decodes it to the same
    pixels), grayscale at the array's bit depth; edge cases: one pixel, constant, full range."""
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    for a in (rng.integers(0, top + 1, (37, 53)).astype(dtype), np.zeros((1, 1), dtype), np.full((3, 2), top, dtype),
              np.arange(64, dtype=dtype).reshape(8, 8)):  # fmt: skip
        data = contract.encode_png(a)
        assert data == contract.encode_png(a.copy())  # deterministic
        with Image.open(io.BytesIO(data)) as im:
            assert im.size == (a.shape[1], a.shape[0]) and im.mode == ("L" if dtype == np.uint8 else "I;16")
            assert np.array_equal(np.asarray(im).astype(dtype), a)
        assert np.array_equal(contract.decode_png(data), a) and contract.decode_png(data).dtype == dtype
    with pytest.raises(ValueError, match="uint8 or uint16"):
        contract.encode_png(np.zeros((2, 2), np.float32))
