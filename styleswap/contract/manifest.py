"""``manifest.json`` as a type: `Manifest` reads, validates and writes it, for both halves.

The rules are the contract's, the same for every reader: a JSON object with a ``labels`` mapping
(name -> id, ids ``0..n-1``), a ``format`` (parquet or hdf5) and a list of ``shards`` (path inside
the folder, split, row count). Everything else a build records (recipe, source, engine, counts,
per-volume statistics, versions) is optional to a reader, typed when present, and kept when a
manifest is read and written back. A folder made by hand or by another tool reads fine; whether a
folder was made by StyleSwap (``tool``) matters only to commands that replace or publish it.

Every refusal is one `StyleSwapError` line naming the manifest file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

from styleswap.contract.schema import FORMAT_VERSION, FORMATS, MANIFEST_NAME, shard_file
from styleswap.errors import StyleSwapError

#: What builds of this package write as ``tool``.
TOOL = "styleswap"


@dataclass(frozen=True)
class ShardEntry:
    """One shard as the manifest lists it. ``bytes`` and ``sha256`` are what `verify` checks."""

    path: str
    split: str = "train"
    num_rows: int = 0
    bytes: int | None = None
    sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "split": self.split, "num_rows": self.num_rows}
        if self.bytes is not None:
            out["bytes"] = self.bytes
        if self.sha256 is not None:
            out["sha256"] = self.sha256
        return out


@dataclass(frozen=True)
class EngineRecord:
    """The engine that rendered the copies and its settings (as the engine describes them)."""

    name: str
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "settings": self.settings}


@dataclass(frozen=True)
class SplitInfo:
    num_rows: int
    num_shards: int

    def to_json(self) -> dict[str, Any]:
        return {"num_rows": self.num_rows, "num_shards": self.num_shards}


@dataclass(frozen=True)
class Counts:
    """Slices, cases, and per label name the number of slices that show it."""

    slices: int
    cases: int
    slices_with_label: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"slices": self.slices, "cases": self.cases, "slices_with_label": self.slices_with_label}


@dataclass
class Manifest:
    """A dataset folder's ``manifest.json`` (see the module docstring for what is required).

    Fields are in the order they are written. ``extra`` keeps keys this version does not know.
    """

    tool: str | None = None
    format_version: int = FORMAT_VERSION
    command: str = ""
    recipe: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    engine: EngineRecord | None = None
    copies: int = 0
    seed: int = 0
    format: str = "parquet"
    rows_per_shard: int | None = None
    image_size: tuple[int, int] | None = None
    splits: dict[str, SplitInfo] = field(default_factory=dict)
    counts: Counts | None = None
    #: The content check (``augment build --qc-model``): model, settings and the ``qc_dice``
    #: distribution; None (and not written) when no check ran.
    qc: dict[str, Any] | None = None
    #: Each case's normalized-volume mean and std (``{case_id: {"mean", "std"}}``), when recorded.
    volume_stats: dict[str, dict[str, float]] | None = None
    versions: dict[str, str] = field(default_factory=dict)
    shards: list[ShardEntry] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    #: What `augment convert` made this dataset from (format, command, the source's shards).
    converted_from: dict[str, Any] | None = None

    # -- reading ----------------------------------------------------------------------------------
    @classmethod
    def read(cls, folder: str | Path) -> "Manifest":
        """The manifest of a dataset folder, validated; one-line `StyleSwapError` otherwise."""
        folder = Path(folder)
        path = folder / MANIFEST_NAME
        if not path.is_file():
            raise StyleSwapError(f"{folder}: not a dataset folder (no {MANIFEST_NAME})")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise StyleSwapError(f"{path}: unreadable manifest ({e})") from None
        return cls.from_json(data, path)

    @classmethod
    def from_json(cls, data: Any, where: str | Path = MANIFEST_NAME) -> "Manifest":
        """Validate a parsed ``manifest.json``; ``where`` names it in errors."""
        if not isinstance(data, dict):
            raise StyleSwapError(f"{where}: a manifest must be a JSON object")
        v = _Fields(data, where)
        labels = data.get("labels")
        if not isinstance(labels, dict) or not labels:
            raise StyleSwapError(f"{where}: no 'labels' mapping (name -> id)")
        try:
            labels = {str(k): _int(v) for k, v in labels.items()}
        except (TypeError, ValueError):
            raise StyleSwapError(f"{where}: label ids must be integers, got {data['labels']}") from None
        if sorted(labels.values()) != list(range(len(labels))):
            raise StyleSwapError(f"{where}: label ids must be 0..{len(labels) - 1}, got {sorted(labels.values())}")
        fmt = data.get("format", "parquet")
        if fmt not in FORMATS:
            raise StyleSwapError(f"{where}: unknown format {fmt!r} (expected one of {FORMATS})")
        engine = data.get("engine")
        if isinstance(engine, str):  # a hand-made folder may name its engine only
            engine = {"name": engine}
        engine = v.record("engine", EngineRecord, engine) if engine is not None else None
        splits = {str(k): v.record(f"splits.{k}", SplitInfo, s) for k, s in v.mapping("splits").items()}
        counts = data.get("counts")
        image_size = data.get("image_size")
        if image_size is not None and not (isinstance(image_size, list) and len(image_size) == 2):
            raise StyleSwapError(f"{where}: image_size must be [height, width], got {image_size!r}")
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(
            tool=v.optional("tool", str),
            format_version=v.optional("format_version", int, FORMAT_VERSION),
            command=v.optional("command", str, ""),
            recipe=v.mapping("recipe"),
            source=v.mapping("source"),
            labels=labels,
            engine=engine,
            copies=v.optional("copies", int, 0),
            seed=v.optional("seed", int, 0),
            format=fmt,
            rows_per_shard=v.optional("rows_per_shard", int),
            image_size=tuple(int(x) for x in image_size) if image_size is not None else None,
            splits=splits,
            counts=v.record("counts", Counts, counts) if counts is not None else None,
            qc=v.mapping("qc") or None,
            volume_stats=data.get("volume_stats") if isinstance(data.get("volume_stats"), dict) else None,
            versions=v.mapping("versions"),
            shards=_shard_entries(data.get("shards"), where),
            extra={k: x for k, x in data.items() if k not in known},
            converted_from=data.get("converted_from") if isinstance(data.get("converted_from"), dict) else None,
        )

    # -- writing ----------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The JSON object of ``manifest.json``, keys in the order builds have always written them."""
        out: dict[str, Any] = {
            "tool": self.tool,
            "format_version": self.format_version,
            "command": self.command,
            "recipe": self.recipe,
            "source": self.source,
            "labels": self.labels,
            "engine": self.engine.to_json() if self.engine else None,
            "copies": self.copies,
            "seed": self.seed,
            "format": self.format,
            "rows_per_shard": self.rows_per_shard,
            "image_size": list(self.image_size) if self.image_size else None,
            "splits": {k: s.to_json() for k, s in self.splits.items()},
            "counts": self.counts.to_json() if self.counts else None,
            **({"qc": self.qc} if self.qc is not None else {}),
            "volume_stats": self.volume_stats,
            "versions": self.versions,
            "shards": [e.to_json() for e in self.shards],
            **self.extra,
        }
        if self.converted_from is not None:
            out["converted_from"] = self.converted_from
        return out

    def write(self, folder: str | Path) -> Path:
        """Write ``folder/manifest.json`` atomically (a reader sees the old file or the new one)."""
        from styleswap.safe_state import write_json_atomic

        path = Path(folder) / MANIFEST_NAME
        write_json_atomic(path, self.to_json())
        return path

    # -- questions readers ask --------------------------------------------------------------------
    def require_styleswap(self, where: str | Path) -> "Manifest":
        """Self, or a refusal if the folder was not made by StyleSwap (for commands that replace
        or publish a dataset and need everything a build records)."""
        if self.tool != TOOL:
            raise StyleSwapError(f"{where}: not a manifest written by {TOOL}")
        return self

    @property
    def num_rows(self) -> int:
        return sum(e.num_rows for e in self.shards)

    @property
    def origin(self) -> dict[str, Any]:
        """The raw source's description, following ``upstream`` through datasets built from datasets."""
        src = self.source
        while src.get("layout") == "styleswap-dataset" and isinstance(src.get("upstream"), dict) and src["upstream"]:
            src = src["upstream"]
        return src

    @property
    def modality(self) -> str:
        """The source modality of the originals as ingest recorded it ("" when unknown)."""
        return str(self.origin.get("modality") or self.extra.get("modality") or "")

    @property
    def license(self) -> str | None:
        """The license recorded at build time (``augment build --license``), if any."""
        return self.recipe.get("license") or None

    def split_rows(self) -> dict[str, int]:
        """Rows per split, splits in the order their first shard is listed."""
        totals: dict[str, int] = {}
        for e in self.shards:
            totals[e.split] = totals.get(e.split, 0) + e.num_rows
        return totals

    def locate(self, split: str, start: int, stop: int) -> Iterator[tuple[ShardEntry, int, int]]:
        """Rows ``[start, stop)`` of ``split`` (positions in listing order) as ``(shard, lo, hi)``
        row ranges of the shards that hold them."""
        first = 0
        for e in self.shards:
            if e.split != split:
                continue
            lo, hi = max(start, first), min(stop, first + e.num_rows)
            if lo < hi:
                yield e, lo - first, hi - first
            first += e.num_rows
            if first >= stop:
                return

    def shard_path(self, folder: str | Path, entry: ShardEntry) -> Path:
        """A shard's file, refused if its path leads outside the dataset folder."""
        return shard_file(Path(folder), entry.path)


def _int(x: Any) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise TypeError(x)
    return x


class _Fields:
    """Typed access to the optional keys of a manifest, with one-line errors naming it."""

    def __init__(self, data: dict[str, Any], where: str | Path) -> None:
        self.data, self.where = data, where

    def optional(self, key: str, kind: type, default: Any = None) -> Any:
        value = self.data.get(key, default)
        if value is None or (isinstance(value, kind) and not (kind is int and isinstance(value, bool))):
            return value
        expected = "an integer" if kind is int else "a string"
        raise StyleSwapError(f"{self.where}: {key!r} must be {expected}, got {value!r}")

    def mapping(self, key: str) -> dict[str, Any]:
        value = self.data.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise StyleSwapError(f"{self.where}: {key!r} must be a JSON object, got {value!r}")
        return value

    def record(self, key: str, cls: type, value: Any) -> Any:
        try:
            return cls(**value)
        except TypeError:
            raise StyleSwapError(f"{self.where}: {key!r} is not a valid {cls.__name__} record: {value!r}") from None


def _shard_entries(raw: Any, where: str | Path) -> list[ShardEntry]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise StyleSwapError(f"{where}: 'shards' must be a list")
    out = []
    for i, e in enumerate(raw):
        ok = isinstance(e, dict) and isinstance(e.get("path"), str)
        rows = e.get("num_rows", 0) if ok else None
        if not ok or isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
            raise StyleSwapError(f"{where}: shards[{i}] needs a 'path' and a row count 'num_rows', got {e!r}")
        out.append(ShardEntry(path=e["path"], split=str(e.get("split", "train")), num_rows=rows,
                              bytes=e.get("bytes"), sha256=e.get("sha256")))
    return out
