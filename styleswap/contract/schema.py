"""The row format of the contract: columns, shard file names, the PNG codec, label ids and colours.

A dataset folder holds::

    manifest.json                          every setting, versions, per-shard rows and sha256
    README.md                              dataset card
    data/<split>-00000-of-000NN.parquet    (or .h5), one row per source slice

Columns (one row per source slice):

=============  =========================  ================================================
sample_id      string                     ``<case_id>/<slice:04d>``, unique in the dataset
case_id        string                     for per-volume (3D) metrics
slice_index    int32                      axial index in the canonical (RAS+) volume
modality       string                     source modality of ``image`` (CT, MRI, ...)
image          PNG (datasets ``Image``)   original slice, 8- or 16-bit grayscale
mask           PNG (datasets ``Image``)   uint8 label map, values = label ids
augmented      list of PNG                K style-intervened copies (may be empty)
prompts        list<string>               per copy: prompt or engine description
seeds          list<int64>                per copy: the seed it was rendered with
engine         string                     controlnet, gin, bezier, none, ...
spacing        list<float32>              row spacing, column spacing, slice thickness (mm)
qc_dice        list<float32> (optional)   per copy: the content check's Dice (format 2)
=============  =========================  ================================================

``qc_dice`` is present only in datasets built with the content check (``augment build
--qc-model``): per copy, the mean Dice over organs between a segmentation model's prediction on
the copy and the slice's mask. Readers take it as optional: a dataset without it is format 1.

HDF5 shards carry the same fields as fixed-shape arrays: ``image`` (N, H, W), ``mask`` (N, H, W),
``augmented`` (N, K, H, W), ``seeds`` (N, K), ``spacing`` (N, 3), ``slice_index`` (N,), and
variable-length UTF-8 strings for the rest (``prompts`` is (N, K)); ``qc_dice``, when present, is
(N, K) float32.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from styleswap.errors import StyleSwapError

#: The newest format this package reads and writes. Version 2 added the optional ``qc_dice``
#: column. A dataset records the lowest version that describes it (`format_version`): 1 without
#: the column, so a build without the content check writes exactly what it wrote before.
FORMAT_VERSION = 2
MANIFEST_NAME = "manifest.json"
CARD_NAME = "README.md"
DATA_DIR = "data"
#: Where a build stages its shards until it commits (the generator's; never read by the trainer).
STAGING_DIR = ".partial"
FORMATS = ("parquet", "hdf5")
SHARD_SUFFIX = {"parquet": ".parquet", "hdf5": ".h5"}

#: Rows per Parquet row group, and per HDF5 read unit: readers that shuffle by unit (the trainer)
#: then see the same units, hence the same order, in either format.
ROW_GROUP_SIZE = 32

#: The project's label set. Ids are what masks hold; names are what users and cards read.
DEFAULT_LABELS: dict[str, int] = {
    "background": 0,
    "liver": 1,
    "kidney_right": 2,
    "kidney_left": 3,
    "spleen": 4,
}

#: Fixed display colours per label id (RGB), used by previews and evaluation overlays.
LABEL_COLORS: dict[int, tuple[int, int, int]] = {
    1: (230, 80, 60),  # liver: red
    2: (60, 140, 230),  # kidney_right: blue
    3: (70, 200, 120),  # kidney_left: green
    4: (240, 200, 50),  # spleen: yellow
    5: (190, 90, 220),
    6: (240, 140, 40),
    7: (60, 210, 210),
    8: (200, 200, 200),
}

COLUMNS = (
    "sample_id",
    "case_id",
    "slice_index",
    "modality",
    "image",
    "mask",
    "augmented",
    "prompts",
    "seeds",
    "engine",
    "spacing",
)

#: Per copy, the content check's score (`generator.qc`); absent when no check ran.
QC_COLUMN = "qc_dice"
#: Columns a shard may lack; readers that need one check for it.
OPTIONAL_COLUMNS = (QC_COLUMN,)


def format_version(columns) -> int:
    """The format version of a dataset whose shards hold ``columns``."""
    return 2 if QC_COLUMN in columns else 1


_SHARD_RE = re.compile(r"^(?P<split>[a-z]+)-(?P<index>\d{5})-of-(?P<total>\d{5})\.(?P<ext>parquet|h5)$")


def sample_id(case_id: str, slice_index: int) -> str:
    return f"{case_id}/{slice_index:04d}"


def shard_name(split: str, index: int, total: int, fmt: str) -> str:
    """Hub-native shard file name, e.g. ``train-00000-of-00004.parquet``."""
    return f"{split}-{index:05d}-of-{total:05d}{SHARD_SUFFIX[fmt]}"


def shard_file(folder: Path, rel: str) -> Path:
    """The file of a manifest's shard path ``rel``, refused if it leads outside the dataset folder
    (an absolute path, ``..``, or a symlinked ``data/``): a downloaded dataset must not make either
    half read or overwrite files elsewhere."""
    folder = Path(folder)
    target = (folder / rel).resolve()
    if Path(rel).is_absolute() or not target.is_relative_to(folder.resolve()):
        raise StyleSwapError(f"{folder / MANIFEST_NAME}: shard path {rel!r} escapes the dataset folder")
    return target


def parse_shard_name(name: str) -> dict[str, Any] | None:
    m = _SHARD_RE.match(name)
    if not m:
        return None
    return {"split": m["split"], "index": int(m["index"]), "total": int(m["total"]), "ext": m["ext"]}


#: Each column's `datasets` feature, as the Hub and `datasets` spell it ("Value", "Image", "List").
FEATURES: dict[str, dict[str, Any]] = {
    "sample_id": {"dtype": "string", "_type": "Value"},
    "case_id": {"dtype": "string", "_type": "Value"},
    "slice_index": {"dtype": "int32", "_type": "Value"},
    "modality": {"dtype": "string", "_type": "Value"},
    "image": {"_type": "Image"},
    "mask": {"_type": "Image"},
    "augmented": {"feature": {"_type": "Image"}, "_type": "List"},
    "prompts": {"feature": {"dtype": "string", "_type": "Value"}, "_type": "List"},
    "seeds": {"feature": {"dtype": "int64", "_type": "Value"}, "_type": "List"},
    "engine": {"dtype": "string", "_type": "Value"},
    "spacing": {"feature": {"dtype": "float32", "_type": "Value"}, "_type": "List"},
}
#: The optional column's feature (format 2; see `QC_COLUMN`).
QC_FEATURE: dict[str, Any] = {"feature": {"dtype": "float32", "_type": "Value"}, "_type": "List"}


def _features(qc: bool) -> dict[str, dict[str, Any]]:
    return {**FEATURES, QC_COLUMN: QC_FEATURE} if qc else FEATURES


def arrow_schema(qc: bool = False):
    """The Arrow schema of a Parquet shard, with `FEATURES` as its ``huggingface`` metadata (so
    `datasets` reads Image columns), built without importing `datasets`, whose import alone costs a
    build about a second. tests/test_contract.py checks it equals ``hf_features().arrow_schema``."""
    import json

    import pyarrow as pa

    def arrow(f: dict[str, Any]):
        if f["_type"] == "List":
            return pa.list_(arrow(f["feature"]))
        if f["_type"] == "Image":
            return pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        return {"string": pa.string(), "int32": pa.int32(), "int64": pa.int64(), "float32": pa.float32()}[f["dtype"]]

    features = _features(qc)
    return pa.schema([(name, arrow(f)) for name, f in features.items()],
                     metadata={"huggingface": json.dumps({"info": {"features": features}})})


def card_features(qc: bool = False) -> list[dict[str, str]]:
    """`FEATURES` as a dataset card's ``dataset_info.features`` list (what `datasets` writes there)."""
    def kind(f: dict[str, Any]) -> str:
        return "image" if f["_type"] == "Image" else f["dtype"]

    return [{"name": n, "list": kind(f["feature"])} if f["_type"] == "List" else {"name": n, "dtype": kind(f)}
            for n, f in _features(qc).items()]


def hf_features(qc: bool = False):
    """`FEATURES` as `datasets.Features` (imported lazily: datasets is heavy); ``qc`` adds the
    optional ``qc_dice`` column."""
    import datasets

    return datasets.Features.from_dict(_features(qc))


# --- PNG codec -----------------------------------------------------------------------------------
# Written here, read with PIL. Every row is stored with PNG's "Sub" filter (each byte minus the one
# to its left) and zlib level 1 with the run-length strategy (matches at distance 1 only): lossless,
# 1.8x faster than zlib's default strategy and smaller (192 x 192 CT slice: 0.21 vs 0.38 ms,
# 16.3 vs 17.7 KiB; GIN copy: 0.22 vs 0.36 ms, 17.5 vs 18.7 KiB); PIL's encoder is 2.4x slower
# again, as it tries all five filters on every row. A build encodes five to nine PNGs per slice, so
# this is most of its non-engine time (issue #16's profile). Any PNG reader decodes these files.
PNG_COMPRESS_LEVEL = 1
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(array: np.ndarray) -> bytes:
    """Lossless grayscale PNG of a 2D uint8 or uint16 array."""
    if array.ndim != 2:
        raise ValueError(f"encode_png expects a 2D array, got shape {array.shape}")
    if array.dtype == np.uint8:
        depth, raw = 8, np.ascontiguousarray(array)
    elif array.dtype == np.uint16:
        depth, raw = 16, np.ascontiguousarray(array, dtype=">u2").view(np.uint8)  # PNG is big-endian
    else:
        raise ValueError(f"encode_png expects uint8 or uint16, got {array.dtype}")
    h, w = array.shape
    bpp = depth // 8
    lines = np.empty((h, 1 + raw.shape[1]), np.uint8)
    lines[:, 0] = 1  # filter type Sub
    lines[:, 1 : 1 + bpp] = raw[:, :bpp]
    np.subtract(raw[:, bpp:], raw[:, :-bpp], out=lines[:, 1 + bpp :])  # modulo 256, as PNG wants
    header = struct.pack(">IIBBBBB", w, h, depth, 0, 0, 0, 0)  # grayscale, deflate, adaptive filters, no interlace
    return (_PNG_SIGNATURE + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", _deflate(lines.tobytes())) + _png_chunk(b"IEND", b""))


def _deflate(data: bytes) -> bytes:
    z = zlib.compressobj(PNG_COMPRESS_LEVEL, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    return z.compress(data) + z.flush()


def decode_png(data: bytes) -> np.ndarray:
    """Inverse of `encode_png`: a 2D uint8 or uint16 array, values exactly as written."""
    with Image.open(io.BytesIO(data)) as img:
        if img.mode == "L":
            return np.asarray(img, dtype=np.uint8).copy()
        if img.mode in ("I;16", "I;16B", "I"):
            return np.asarray(img).astype(np.uint16)
        raise ValueError(f"unexpected PNG mode {img.mode!r}: the contract stores grayscale only")


def to_unit_float(image: np.ndarray) -> np.ndarray:
    """Stored pixels (uint8 or uint16) to float32 in [0, 1]."""
    scale = 255.0 if image.dtype == np.uint8 else 65535.0
    return image.astype(np.float32) / scale


def from_unit_float(image: np.ndarray, dtype=np.uint8) -> np.ndarray:
    """Float image in [0, 1] to stored pixels, clipped and rounded."""
    scale = 255.0 if np.dtype(dtype) == np.uint8 else 65535.0
    return np.clip(np.rint(np.asarray(image, dtype=np.float32) * scale), 0, scale).astype(dtype)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """A file's sha256, read in chunks: how manifests name shards and models name their weights."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
