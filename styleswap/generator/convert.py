"""Convert a dataset folder between Parquet and HDF5 (`augment convert`).

Every field of every row is carried over (images as the same pixel arrays, so PNG bytes written
back are the bytes a build writes), shard by shard with the same boundaries. The new folder gets a
new manifest recording ``converted_from`` and a rewritten card, and passes `augment verify`.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from styleswap import contract
from styleswap.contract import Manifest, ShardReader
from styleswap.errors import StyleSwapError
from styleswap.generator import card, dataset, shards
from styleswap.generator.commit import command_line
from styleswap.generator.staging import OutputFolder, clear_previous


def convert_dataset(folder: str | Path, out: str | Path, to: str, *, overwrite: bool = False) -> Manifest:
    """Write ``folder`` as a ``to``-format dataset in ``out``; return the new manifest.

    Raises:
        StyleSwapError: unknown format, same format, unreadable source, ``out`` inside or equal to
            ``folder``, or (to HDF5) rows whose image size or number of copies varies.
    """
    folder, out = Path(folder), Path(out)
    if to not in contract.FORMATS:
        raise StyleSwapError(f"--to must be one of {', '.join(contract.FORMATS)}, got {to!r}")
    manifest = dataset.read_manifest(folder)
    if manifest.format == to:
        raise StyleSwapError(f"{folder}: already {to}; nothing to convert")
    if out.resolve() == folder.resolve() or out.resolve().is_relative_to(folder.resolve()):
        raise StyleSwapError(f"--out {out} must not be the source folder or inside it")
    dataset.verify(folder)  # convert what the manifest promises, not a damaged copy
    with OutputFolder(out, overwrite=overwrite, what="augment convert") as staging:
        writers: dict[str, shards.ShardWriter] = {}
        for entry in manifest.shards:
            split = entry.split
            w = writers.get(split)
            if w is None:
                w = writers[split] = shards.ShardWriter(staging, split, to, max(1, entry.num_rows))
            # the writer closes a shard after exactly rows_per_shard rows: same boundaries as the source
            w.rows_per_shard = max(1, entry.num_rows)
            for r in ShardReader(manifest.shard_path(folder, entry)).iter_rows():
                row = shards.Row(
                    sample_id=r["sample_id"], case_id=r["case_id"], slice_index=int(r["slice_index"]),
                    modality=r["modality"], image=r["image"], mask=r["mask"], augmented=list(r["augmented"]),
                    prompts=list(r["prompts"]), seeds=[int(s) for s in r["seeds"]], engine=r["engine"],
                    spacing=tuple(r["spacing"]), split=split, qc_dice=r.get(contract.QC_COLUMN),
                )
                try:
                    w.add(row)
                except StyleSwapError as e:
                    raise StyleSwapError(f"cannot convert {folder} to {to}: {e}") from None
        for w in writers.values():
            w.close()
        if overwrite:
            clear_previous(out)
        entries = shards.finalize_shards(out, list(writers.values()))
        if [(e.split, e.num_rows) for e in entries] != [(e.split, e.num_rows) for e in manifest.shards]:
            raise StyleSwapError(f"{folder}: shard boundaries changed in conversion (a shard of 0 rows?)")
        new = dataclasses.replace(
            manifest,
            format=to,
            command=command_line(),
            converted_from={
                "path": str(folder),
                "format": manifest.format,
                "command": manifest.command,
                "shards": [{"path": e.path, "sha256": e.sha256} for e in manifest.shards],
            },
            versions=dataset.package_versions(),
            shards=entries,
        )
        if (folder / "preview.png").is_file():
            shutil.copyfile(folder / "preview.png", out / "preview.png")
        card.write_card(out, new)
        new.write(out)  # the commit point
    return new
