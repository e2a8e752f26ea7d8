"""Reading and writing weights: mematte checkpoints, official ViTMatte/MEMatte files, Hugging Face
VitMatte folders and pretrained ViT backbones (timm / DINO / MAE).

A mematte checkpoint is a Lightning checkpoint whose ``"mematte"`` entry stores the resolved
net config, so a checkpoint alone rebuilds its model (:func:`net_from_checkpoint`).

Every other format is first converted to our key layout (:class:`NetWeights`), then loaded with
one set of checks (:func:`apply_weights`):

=========== ======================================================= ==========================
format      what it is                                              net config from
=========== ======================================================= ==========================
mematte     ``train.py`` checkpoint (``state_dict`` + ``mematte``)  the checkpoint
official    hustvl/ViTMatte or linyiheng123/MEMatte detectron2 file the tensor shapes
            (``{'model': sd}`` or bare ``sd``, maybe ``module.``)
hf          ``save_pretrained`` folder of ``VitMatteForImageMatting`` ``config.json``
            (or a hub id such as ``hustvl/vitmatte-small-composition-1k``
            from the local Hugging Face cache)
backbone    timm / DINO / MAE ViT state dict (backbone init only)   the tensor shapes
=========== ======================================================= ==========================

Entry points: :func:`load_net_weights` (detects the format, optionally builds the net),
:func:`net_from_any` (eval / predict: a ready net from any full-net file),
:func:`init_net_from` (``init_from=``: student / backbone initialisation),
:func:`export_official` / :func:`export_hf` (write the official layout / a Hugging Face
folder) and :func:`save_net_checkpoint`
(write a mematte checkpoint that ``eval.py`` / ``predict.py`` read).

Layout: one module per format (:mod:`.native`, :mod:`.official`, :mod:`.hf`,
:mod:`.backbone`), shared reading in :mod:`.common`, configs inferred from shapes in
:mod:`.netconfig`, and the entry that dispatches between them in :mod:`.loading`.
"""

from mematte.checkpoints.backbone import adapt_backbone_state, read_backbone_weights
from mematte.checkpoints.common import (
    PickledObject,
    FORMAT_ALIASES,
    FORMAT_NAMES,
    FORMATS,
    HF_DEFAULT_MEAN,
    HF_DEFAULT_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NetWeights,
    classify_state,
)
from mematte.checkpoints.hf import (
    export_hf,
    hf_config_dicts,
    hf_net_config,
    hf_to_ours,
    is_hub_id,
    ours_to_hf,
    read_hf_weights,
    resolve_source,
)
from mematte.checkpoints.loading import (
    WeightsMismatchError,
    apply_weights,
    detect_format,
    init_net_from,
    load_net_weights,
    load_teacher,
    net_from_any,
    net_from_weights,
    read_weights,
)
from mematte.checkpoints.native import (
    load_checkpoint,
    net_from_checkpoint,
    net_state,
    read_mematte_weights,
    save_net_checkpoint,
)
from mematte.checkpoints.netconfig import build_net, infer_net_config, resolve_net_config
from mematte.checkpoints.official import (
    export_official,
    official_to_ours,
    ours_to_official,
    read_official_weights,
)

__all__ = [
    "FORMATS",
    "FORMAT_ALIASES",
    "FORMAT_NAMES",
    "HF_DEFAULT_MEAN",
    "HF_DEFAULT_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NetWeights",
    "PickledObject",
    "WeightsMismatchError",
    "adapt_backbone_state",
    "apply_weights",
    "build_net",
    "classify_state",
    "detect_format",
    "export_hf",
    "export_official",
    "hf_config_dicts",
    "hf_net_config",
    "hf_to_ours",
    "infer_net_config",
    "init_net_from",
    "is_hub_id",
    "load_checkpoint",
    "load_net_weights",
    "load_teacher",
    "net_from_any",
    "net_from_checkpoint",
    "net_from_weights",
    "net_state",
    "official_to_ours",
    "ours_to_hf",
    "ours_to_official",
    "read_backbone_weights",
    "read_hf_weights",
    "read_mematte_weights",
    "read_official_weights",
    "read_weights",
    "resolve_net_config",
    "resolve_source",
    "save_net_checkpoint",
]
