"""Volume preprocessing shared by both halves, importing neither (like `contract` and `errors`).

- `io`: read and validate NIfTI volumes (and `dicom` series), reorient to RAS+, remap label ids.
- `intensity`: the per-modality intensity rules and per-volume statistics.
- `geometry`: RAS+ orientation, display slices, pad to square, resize, and their exact inverse.
- `preprocess`: a model's whole forward preparation of a scan and the inverse of its prediction,
  described by name and settings (`Preprocessing`) in the model's config.

`augment ingest` uses them forward on training and evaluation data; `train predict` forward on a
new scan and inverse on the prediction, so a model's input is always prepared by the same code as
its training data and its output lands on the scan's own voxel grid.
"""
