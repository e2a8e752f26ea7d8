"""Matting data: compositing / trimap / crop utilities, procedural datasets, data module.

Modules:
    composition: ``composite``, ``quantise_trimap`` (the one trimap rule), ``trimap_from_alpha``
        (OpenCV morphology), ``crop_around_unknown``.
    synthetic: the procedural dataset: seeded source, train / eval datasets, folder export + CLI;
        its layers come from scenes (backgrounds, foregrounds), strands (hair, fur) and noise.
    datamodule: ``MattingDataModule`` (Lightning) building the loaders.

Submodules are imported explicitly (``from mematte.data.synthetic import ...``) so that the
synthetic CLI does not pull in Lightning.

Sample contract (dict of tensors): "image" (3, H, W) float32 in [0, 1], not normalised;
"alpha" (1, H, W) float32 in [0, 1]; "trimap" (1, H, W) float32 in {0, 0.5, 1}; "fg", "bg"
(3, H, W) float32 in [0, 1] for training samples only; "name" str.
"""
