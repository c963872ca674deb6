"""The dataset contract: what the generator and the trainer share (with `errors` and `safe_state`).

- `schema`: the columns, shard file names, the PNG codec, the label set and its colours;
- `manifest`: ``manifest.json`` as the `Manifest` type (read, validate, write);
- `reader`: the one shard-row reader (`ShardReader`, `decode_row`);
- `seeds`: `derive_seed`, the seed of every rendered copy (`retry_seed`: of a re-rendered one).

This package is deliberately free of the diffusion stack, of torch and of medical-file readers, so
that both halves (and users' own code) can import it cheaply.
"""

from styleswap.contract.manifest import TOOL, Counts, EngineRecord, Manifest, ShardEntry, SplitInfo
from styleswap.contract.reader import ShardReader, count_rows, decode_image, decode_row, read_unit
from styleswap.contract.schema import (
    CARD_NAME,
    COLUMNS,
    DATA_DIR,
    DEFAULT_LABELS,
    FORMAT_VERSION,
    FORMATS,
    LABEL_COLORS,
    MANIFEST_NAME,
    OPTIONAL_COLUMNS,
    PNG_COMPRESS_LEVEL,
    QC_COLUMN,
    ROW_GROUP_SIZE,
    SHARD_SUFFIX,
    STAGING_DIR,
    FEATURES,
    arrow_schema,
    card_features,
    decode_png,
    encode_png,
    format_version,
    from_unit_float,
    hf_features,
    parse_shard_name,
    sample_id,
    shard_file,
    sha256_file,
    shard_name,
    to_unit_float,
)
from styleswap.contract.seeds import derive_seed, retry_seed

__all__ = [
    "CARD_NAME", "COLUMNS", "DATA_DIR", "DEFAULT_LABELS", "FORMAT_VERSION", "FORMATS", "LABEL_COLORS",
    "MANIFEST_NAME", "OPTIONAL_COLUMNS", "PNG_COMPRESS_LEVEL", "QC_COLUMN", "ROW_GROUP_SIZE", "SHARD_SUFFIX", "STAGING_DIR", "TOOL",
    "Counts", "EngineRecord", "Manifest", "ShardEntry", "ShardReader", "SplitInfo",
    "FEATURES", "arrow_schema", "card_features", "count_rows", "decode_image", "decode_png", "decode_row", "derive_seed",
    "read_unit", "encode_png", "format_version", "from_unit_float", "retry_seed",
    "hf_features", "parse_shard_name", "sample_id", "sha256_file", "shard_file", "shard_name", "to_unit_float",
]
