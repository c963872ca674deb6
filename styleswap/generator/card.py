"""The dataset card (README.md): YAML front matter the Hub and `datasets.load_dataset` read, and a
body that says what the data is, how it was made and how to use it.

`render_card` is pure (manifest in, text out) so that `augment push --dry-run` can show the card
without touching the folder; `write_card` writes it next to the shards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from styleswap import contract
from styleswap.contract import Counts, EngineRecord, Manifest
from styleswap.generator.qc import card_lines
from styleswap.hub_publish import LICENSE_RE  # the Hub's license-id rule, shared with train push


def size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def modalities(manifest: Manifest) -> list[str]:
    return sorted({manifest.modality or "CT"})


def front_matter(manifest: Manifest, license: str | None) -> dict[str, Any]:
    splits = sorted({e.split for e in manifest.shards})
    ext = contract.SHARD_SUFFIX[manifest.format]
    meta: dict[str, Any] = {}
    if license:
        meta["license"] = license
    meta.update(
        {
            "task_categories": ["image-segmentation"],
            "tags": ["medical", "synthetic", "styleswap", *[m.lower() for m in modalities(manifest)]],
            "size_categories": [size_category(manifest.counts.slices if manifest.counts else manifest.num_rows)],
            "configs": [
                {
                    "config_name": "default",
                    "data_files": [{"split": s, "path": f"{contract.DATA_DIR}/{s}-*{ext}"} for s in splits],
                }
            ],
        }
    )
    if manifest.format == "parquet":
        # The features of the shards themselves (their Arrow schema carries the same), so the Hub's
        # viewer and `load_dataset` decode images without guessing.
        meta["dataset_info"] = {
            "features": contract.card_features(qc=manifest.qc is not None),
            "splits": [
                {"name": s, "num_bytes": sum(e.bytes or 0 for e in manifest.shards if e.split == s),
                 "num_examples": sum(e.num_rows for e in manifest.shards if e.split == s)}
                for s in splits
            ],
            "download_size": sum(e.bytes or 0 for e in manifest.shards),
        }
    return meta


def _yaml_block(obj: Any) -> list[str]:
    return ["```yaml", yaml.safe_dump(obj, sort_keys=False).rstrip() if obj else "{}", "```"]


def _model_lines(settings: dict[str, Any]) -> list[str]:
    """Model ids and their content hashes (controlnet engine), for reproducibility."""
    hashes = settings.get("model_sha256") or {}
    lines = []
    for key in ("base_model", "unet", "controlnet"):
        if settings.get(key):
            digest = hashes.get(key)
            lines.append(f"- `{key}`: `{settings[key]}`" + (f" (sha256 `{digest}`)" if digest else ""))
    return lines


def render_card(
    manifest: Manifest,
    *,
    title: str,
    license: str | None = None,
    description: str | None = None,
    repo_id: str | None = None,
    has_preview: bool = False,
) -> str:
    """The full README.md text of a dataset (front matter + body)."""
    license = license or manifest.license
    description = description or manifest.recipe.get("description")
    meta = front_matter(manifest, license)
    labels = manifest.labels
    engine = manifest.engine or EngineRecord("?")
    settings = engine.settings or {}
    src = manifest.origin
    counts = manifest.counts or Counts(manifest.num_rows, 0)
    size = list(manifest.image_size) if manifest.image_size else None
    where = repo_id or "<this folder>"
    hub = f"hf://{repo_id}" if repo_id else "hf://USER/NAME"
    prompts = {k: v for k, v in settings.items() if "prompt" in k}
    src_paths = src.get("paths") or ([src["path"]] if src.get("path") else [])
    src_license = src.get("license") or src.get("licence")
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).rstrip(),
        "---",
        f"# {title}",
        "",
        description
        or "Style-intervened copies of medical image slices for single-source cross-modality segmentation, "
        "built with StyleSwap (`augment build`). Each row is one source slice with its label mask and K copies "
        "whose appearance (style) was changed while the anatomy (content) was kept.",
        "",
        "## What the data is",
        "",
        f"- License of this dataset: `{license or 'not recorded'}`",
        f"- Source data: `{src.get('layout', '?')}` {', '.join(str(p) for p in src_paths)}".rstrip()
        + (f" (source license: `{src_license}`)" if src_license else " (source license: not recorded; check it before use)"),
        f"- Modality of the originals: {', '.join(modalities(manifest))}",
        f"- Slices: {counts.slices} from {counts.cases} cases, image size {size}",
        f"- Style engine: `{engine.name}`, {manifest.copies} copies per slice",
        f"- Build seed: {manifest.seed}; every copy's seed derives from (build seed, sample_id, copy index) "
        "and is stored in the `seeds` column",
        f"- Format: {manifest.format}, {len(manifest.shards)} shard(s) under `{contract.DATA_DIR}/`",
    ]
    if manifest.converted_from:
        cf = manifest.converted_from
        lines.append(f"- Converted from {cf.get('format')} (`augment convert`), shards listed with their sha256 in manifest.json")
    lines += [
        "",
        "Masks are uint8 label maps (grayscale PNG); pixel values are label ids:",
        "",
        "| label | id | slices containing it |",
        "|---|---|---|",
        *[
            f"| {name} | {i} | {counts.slices_with_label.get(name, 0) if i else '-'} |"
            for name, i in sorted(labels.items(), key=lambda kv: kv[1])
        ],
        "",
        *(card_lines(manifest.qc) if manifest.qc is not None else []),
        "## How it was made",
        "",
        "Command:",
        "",
        f"    {manifest.command or 'augment build'}",
        "",
        "Engine settings:",
        "",
        *_yaml_block(settings),
        "",
    ]
    models = _model_lines(settings)
    if models:
        lines += ["Models:", "", *models, ""]
    if prompts:
        lines += ["Prompt set:", "", *_yaml_block(prompts), ""]
    if manifest.recipe:
        lines += ["Recipe (every build setting; `augment build recipe.yaml` rebuilds it):", "", *_yaml_block(manifest.recipe), ""]
    if has_preview:
        lines += ["## Preview", "", "Per row: the original, its mask in fixed organ colours, its copies.", "",
                  "![preview](preview.png)", ""]
    lines += [
        "## How to use it",
        "",
        "```python",
        "import datasets",
        f'ds = datasets.load_dataset("{where}", split="train")',
        'row = ds[0]  # row["image"], row["mask"]: PIL images; row["augmented"]: list of PIL images',
        "```",
        "",
        "Train a segmentation network on it (the dataset is downloaded into the Hugging Face cache):",
        "",
        f"    train seg --data {hub} --out runs/NAME",
        "",
        f"or after a download (`hf download {repo_id or 'USER/NAME'} --repo-type dataset --local-dir DIR`): "
        "`train seg --data DIR --out runs/NAME`.",
        "",
        "Columns, per-shard row counts and sha256 are in `manifest.json`; `augment verify DIR` checks them.",
        "",
    ]
    return "\n".join(lines)


def write_card(
    out: Path,
    manifest: Manifest,
    license: str | None = None,
    description: str | None = None,
    repo_id: str | None = None,
) -> Path:
    out = Path(out)
    text = render_card(
        manifest, title=repo_id or out.name, license=license, description=description, repo_id=repo_id,
        has_preview=(out / "preview.png").is_file(),
    )
    path = out / contract.CARD_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path
