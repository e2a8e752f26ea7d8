"""Matting data: compositing / trimap / crop utilities, procedural datasets, data module.

Modules:
    composition: ``composite``, trimap quantisation, ``trimap_from_alpha``, ``crop_around_unknown``.
    synthetic: procedural (fg, alpha, bg) generator, train / eval datasets, folder export + CLI.
    datamodule: ``MattingDataModule`` (Lightning) building the loaders.

Submodules are imported explicitly (``from mematte.data.synthetic import ...``) so that the
synthetic CLI does not pull in Lightning.

Sample contract (dict of tensors): "image" (3, H, W) float32 in [0, 1], not normalised;
"alpha" (1, H, W) float32 in [0, 1]; "trimap" (1, H, W) float32 in {0, 0.5, 1}; "fg", "bg"
(3, H, W) float32 in [0, 1] for training samples only; "name" str.
"""
