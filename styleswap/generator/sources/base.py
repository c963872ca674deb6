"""Data types that flow from a source to the shard writer."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Volume:
    """One case, already validated, reoriented to RAS+ and remapped to the project's label ids.

    ``image`` and ``label`` are (X, Y, Z) arrays indexed in RAS+ (x towards the patient's
    right... i.e. nibabel's canonical orientation), ``spacing`` is in mm along X, Y, Z.
    """

    case_id: str
    image: np.ndarray  # float32 (X, Y, Z), raw intensities (HU for CT when known)
    label: np.ndarray  # uint8 (X, Y, Z), project label ids
    spacing: tuple[float, float, float]
    modality: str  # "CT", "MRI", ...
    split: str = "train"
    path: str = ""  # where it came from, for error messages


@dataclass
class SourceSlice:
    """One preprocessed axial slice, ready to be intervened on and written."""

    sample_id: str
    case_id: str
    slice_index: int
    modality: str
    image: np.ndarray | None  # uint8 (H, W) (or uint16), displayed the fixed way (see slicing.py)
    mask: np.ndarray | None  # uint8 (H, W), label ids (both None until `decoded` when read undecoded)
    spacing: tuple[float, float, float]  # row spacing, column spacing, slice thickness (mm)
    split: str = "train"
    extra: dict = field(default_factory=dict)
    #: the PNG bytes of ``image`` and ``mask`` as an ingested dataset stores them: written again
    #: as they are, instead of decoding and re-encoding the same pixels (None: encode)
    png: dict[str, bytes] | None = None

    def decoded(self) -> SourceSlice:
        """This slice with ``image`` and ``mask`` as arrays. A dataset source can be read without
        decoding (`dataset.iter_source_slices(decode=False)`) so that render worker processes,
        not the one reader, pay for the PNG decoding."""
        if self.image is None or self.mask is None:
            from styleswap.contract import decode_png

            self.image, self.mask = decode_png(self.png["image"]), decode_png(self.png["mask"])
        return self
