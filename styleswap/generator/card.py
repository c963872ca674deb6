"""The dataset card (README.md): YAML front matter the Hub and `datasets.load_dataset` read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from styleswap import contract


def size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def front_matter(manifest: dict[str, Any], license: str | None) -> dict[str, Any]:
    splits = sorted({e["split"] for e in manifest["shards"]})
    ext = contract.SHARD_SUFFIX[manifest["format"]]
    modalities = sorted({manifest.get("source", {}).get("modality") or "CT"})
    meta: dict[str, Any] = {
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": s, "path": f"{contract.DATA_DIR}/{s}-*{ext}"} for s in splits],
            }
        ],
        "task_categories": ["image-segmentation"],
        "tags": ["medical", "synthetic", "styleswap", *[m.lower() for m in modalities]],
        "size_categories": [size_category(manifest["counts"]["slices"])],
    }
    if license:
        meta["license"] = license
    if manifest["format"] == "parquet":
        feats = contract.hf_features()
        meta["dataset_info"] = {
            "features": feats._to_yaml_list(),
            "splits": [{"name": s, "num_examples": manifest["splits"][s]["num_rows"]} for s in splits],
        }
    return meta


def write_card(out: Path, manifest: dict[str, Any], license: str | None = None, description: str | None = None) -> Path:
    meta = front_matter(manifest, license)
    labels = manifest["labels"]
    engine = manifest["engine"]
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).rstrip(),
        "---",
        f"# {Path(out).name}",
        "",
        description
        or "Style-intervened copies of medical image slices for single-source cross-modality segmentation, "
        "built with StyleSwap (`augment build`).",
        "",
        f"- Source: `{manifest['source'].get('layout', '?')}` {manifest['source'].get('path', '')}",
        f"- Engine: `{engine['name']}`, {manifest['copies']} copies per slice, build seed {manifest['seed']}",
        f"- Slices: {manifest['counts']['slices']} from {manifest['counts']['cases']} cases, "
        f"image size {manifest.get('image_size')}",
        f"- Format: {manifest['format']}, {len(manifest['shards'])} shard(s)",
        "",
        "| label | id | slices containing it |",
        "|---|---|---|",
        *[
            f"| {name} | {i} | {manifest['counts']['slices_with_label'].get(name, 0) if i else '-'} |"
            for name, i in labels.items()
        ],
        "",
        "Built with:",
        "",
        f"    {manifest.get('command') or 'augment build'}",
        "",
        "Engine settings:",
        "",
        "```yaml",
        yaml.safe_dump(engine.get("settings", {}), sort_keys=False).rstrip() or "{}",
        "```",
        "",
    ]
    if (Path(out) / "preview.png").exists():
        lines += ["![preview](preview.png)", ""]
    lines += [
        "Load it with `datasets.load_dataset(\"<this folder or repo id>\")`, or train on it with",
        "`train seg --data <this folder>`.",
        "",
    ]
    path = Path(out) / contract.CARD_NAME
    path.write_text("\n".join(lines))
    return path
