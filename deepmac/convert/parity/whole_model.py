"""A whole random official ``DeepMACMetaArch`` (HG-104) against our converted Deep-MAC."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepmac.convert.parity.environment import deepmac_meta_arch_namespace, prepare_tensorflow
from deepmac.convert.parity.report import HEAD_BOUND, STACK_BOUND, ParityRow, compare
from deepmac.convert.parity.tf_weights import (
    Manifest,
    convert,
    nchw,
    randomize,
    save_checkpoint,
    scale_residual_branches,
)
from deepmac.models.mask_branch import EmbeddingFeatures


def build_tf_deepmac(
    ns: dict[str, Any], *, mask_head: str = "hourglass52", image_size: int = 512, seed: int = 0
) -> Any:
    """The official ``DeepMACMetaArch``: ``hourglass_104`` feature extractor (BGR, official
    means/stds), 90 classes, CenterNet heads, 32-d instance and 16-d pixel embeddings, the
    ``mask_head`` network, inference mode, random weights (``randomize``).

    The OD API revision read here builds the embedding heads with ``make_prediction_net``'s
    ``unit_height_conv=True`` default (1x3 kernels). The second stack's (index 1) embedding
    heads are rebuilt with 3x3 kernels, as in the earlier 2021 code the paper describes, so one
    model checks both kernel layouts; inference uses the second stack (3x3). Which of the two
    the released checkpoint has was not seen here; the converter accepts both.
    """
    import tensorflow as tf
    from google.protobuf import text_format
    from object_detection.builders import image_resizer_builder
    from object_detection.core import losses
    from object_detection.meta_architectures import center_net_meta_arch as cn
    from object_detection.models import center_net_hourglass_feature_extractor as hgfe
    from object_detection.protos import image_resizer_pb2

    from deepmac.convert.convert import OFFICIAL_BGR_MEAN, OFFICIAL_BGR_STD

    dm = ns
    resizer = image_resizer_builder.build(
        text_format.Parse(
            f"keep_aspect_ratio_resizer {{ min_dimension: {image_size} max_dimension: {image_size} "
            f"pad_to_max_dimension: true }}",
            image_resizer_pb2.ImageResizer(),
        )
    )
    extractor = hgfe.hourglass_104(
        channel_means=OFFICIAL_BGR_MEAN, channel_stds=OFFICIAL_BGR_STD, bgr_ordering=True
    )
    center = cn.ObjectCenterParams(
        classification_loss=losses.PenaltyReducedLogisticFocalLoss(alpha=2.0, beta=4.0),
        object_center_loss_weight=1.0,
        max_box_predictions=100,
    )
    detection = cn.ObjectDetectionParams(
        localization_loss=losses.L1LocalizationLoss(), scale_loss_weight=0.1, offset_loss_weight=1.0
    )
    deepmac = dm["DeepMACParams"](
        classification_loss=losses.WeightedSigmoidClassificationLoss(),
        dim=32,
        task_loss_weight=5.0,
        pixel_embedding_dim=16,
        allowed_masked_classes_ids=[],
        mask_size=32,
        mask_num_subsamples=-1,
        use_xy=True,
        network_type=mask_head,
        use_instance_embedding=True,
        num_init_channels=64,
        predict_full_resolution_masks=False,
        postprocess_crop_size=256,
        max_roi_jitter_ratio=0.0,
        roi_jitter_mode="default",
        box_consistency_loss_weight=0.0,
    )

    class DeepMACMetaArch(dm["DeepMACMetaArch"]):
        """The official class; stack 1's embedding heads get 3x3 kernels (the heads are
        replaced before Keras tracks them: tracked lists must stay append-only)."""

        def _construct_prediction_heads(self, *args, **kwargs):
            heads = super()._construct_prediction_heads(*args, **kwargs)
            for key, dim in ((dm["INSTANCE_EMBEDDING"], 32), (dm["PIXEL_EMBEDDING"], 16)):
                heads[key][1] = cn.make_prediction_net(dim, unit_height_conv=False)
            return heads

    tf.random.set_seed(seed)
    model = DeepMACMetaArch(
        is_training=False,
        add_summaries=False,
        num_classes=90,
        feature_extractor=extractor,
        image_resizer_fn=resizer,
        object_center_params=center,
        object_detection_params=detection,
        deepmac_params=deepmac,
    )
    pre, shapes = model.preprocess(tf.zeros([1, image_size, image_size, 3]))
    model.predict(pre, shapes)  # builds every variable but the mask net's
    model._mask_net(tf.zeros([1, 32]), tf.zeros([1, 32, 32, 18]), training=False)
    randomize(model, seed)
    return model


def check_deepmac_model(
    *,
    models_dir: str | Path | None = None,
    image: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
    image_size: int = 512,
    backbone_size: int = 256,
    mask_head: str = "hourglass52",
    saved_model: bool = True,
    workdir: str | Path | None = None,
    seed: int = 0,
    log: Callable[[str], None] = print,
    manifest: Manifest | None = None,
) -> list[ParityRow]:
    """A random-weight official ``DeepMACMetaArch`` vs our converted Deep-MAC.

    Rows: the HG-104 backbone on a random normalised input (both stacks), every CenterNet head
    on a random feature map (both stacks), then the whole stack on ``image`` (``(S, S, 3)``
    uint8 RGB, ``S = image_size``) in the official order: ``preprocess`` -> ``predict`` ->
    the mask net at ``boxes`` (``(N, 4)`` xyxy pixels; ``_get_mask_head_input``,
    ``_get_instance_embeddings``, ``_mask_net`` as ``_postprocess_sample`` runs them) ->
    ``postprocess`` (top-100 detections and their masks). With ``saved_model``, the model is also
    exported as a SavedModel, converted, and compared tensor by tensor with the checkpoint
    conversion.
    """
    import tensorflow as tf

    root = prepare_tensorflow(models_dir)
    ns = deepmac_meta_arch_namespace(root)
    if "DeepMACMetaArch" not in ns:
        raise RuntimeError(
            "deepmac_meta_arch.py could not be imported as a module (only its mask-head "
            "definitions were loaded): the whole-model check needs the full OD API "
            "(object_detection/ with its protos) importable"
        )
    rng = np.random.default_rng(seed)
    if image is None:
        image = rng.integers(0, 256, size=(image_size, image_size, 3), dtype=np.uint8)
    if boxes is None:
        corner = rng.uniform(0, image_size * 0.6, size=(8, 2))
        boxes = np.concatenate([corner, corner + rng.uniform(8, image_size * 0.4, (8, 2))], 1)
    boxes = np.asarray(boxes, np.float32)
    workdir = Path(workdir or tempfile.mkdtemp(prefix="deepmac_parity_"))
    rows: list[ParityRow] = []

    start = time.perf_counter()
    model = build_tf_deepmac(ns, mask_head=mask_head, image_size=image_size, seed=seed)
    scale_residual_branches(model, seed)  # backbone and mask-head hourglasses
    save_checkpoint(workdir / "checkpoint", model=model)
    conversion = convert(workdir / "checkpoint", "deepmac", manifest, image_size=image_size)
    ours = conversion.model
    log(
        f"  built, saved and converted the TF Deep-MAC ({time.perf_counter() - start:.0f} s): "
        f"{len(conversion.report.consumed)} variables"
    )
    rows.append(
        ParityRow(
            "Deep-MAC checkpoint conversion: every TF variable consumed, every "
            "PyTorch tensor filled",
            float(not conversion.report.ok),
            0.0,
            0.0,
            f"{len(conversion.report.consumed)} variables, "
            f"{len(conversion.report.skipped)} skipped (save counter)",
        )
    )

    # 1. Backbone on a random input that is already normalised (BGR for TF, RGB for ours).
    x = rng.normal(size=(1, backbone_size, backbone_size, 3)).astype(np.float32)
    ref = model._feature_extractor(tf.constant(x))
    with torch.no_grad():
        feats = ours.backbone(nchw(x[..., ::-1]))
    for s in range(2):
        rows.append(
            compare(
                f"HG-104 backbone, stack {s + 1} output",
                feats[s].permute(0, 2, 3, 1),
                ref[s].numpy(),
                HEAD_BOUND,
                f"{backbone_size}x{backbone_size} input",
            )
        )
    log(f"  backbone: {max(r.max_abs_diff for r in rows[-2:]):.2e}")

    # 2. CenterNet prediction heads on a random feature map.
    f = rng.normal(size=(1, 64, 64, 256)).astype(np.float32)
    ours_heads = {
        "object_center": ours.heatmap_heads,
        "box/scale": ours.size_heads,
        "box/offset": ours.offset_heads,
        ns["INSTANCE_EMBEDDING"]: ours.instance_heads,
        ns["PIXEL_EMBEDDING"]: ours.pixel_heads,
    }
    for key, torch_heads in ours_heads.items():
        for s in range(2):
            ref = model._prediction_head_dict[key][s](tf.constant(f)).numpy()
            with torch.no_grad():
                out = torch_heads[s](nchw(f)).permute(0, 2, 3, 1)
            kernel = model._prediction_head_dict[key][s].layers[0].kernel.shape[:2]
            rows.append(
                compare(
                    f"CenterNet head {key}, stack {s + 1}",
                    out,
                    ref,
                    HEAD_BOUND,
                    f"{kernel[0]}x{kernel[1]} hidden conv",
                )
            )

    # 3. The whole stack on the image, in the official order.
    start = time.perf_counter()
    stack_rows, detections = _check_stack(model, ours, ns, image, boxes, image_size)
    rows += stack_rows
    log(f"  whole stack: {time.perf_counter() - start:.0f} s")
    rows += _check_predictor(conversion, workdir, image, detections)

    if saved_model:
        start = time.perf_counter()
        rows.append(_check_saved_model(model, conversion, workdir, image_size))
        log(f"  SavedModel: {time.perf_counter() - start:.0f} s")
    return rows


def _check_predictor(
    conversion, workdir: Path, image: np.ndarray, detections: dict[str, np.ndarray]
) -> list[ParityRow]:
    """The user path: ``save_conversion`` -> ``.pt`` -> ``DeepMACPredictor.from_checkpoint``
    (what ``deepmac predict`` loads; mask-head BNs fused) -> ``predict(image)``, against the
    official ``postprocess`` (``detections``: TF top-100 ``scores``, ``boxes`` as xyxy input
    pixels, ``classes`` 0-based). The image is square at the model's input size, so the
    predictor's resize is the identity."""
    from deepmac.convert import save_conversion
    from deepmac.inference.detector import DeepMACPredictor

    path = workdir / "deepmac_converted.pt"
    save_conversion(conversion, path)
    predictor = DeepMACPredictor.from_checkpoint(path)
    inst = predictor.predict(image)
    same_ids = inst.category_ids.numpy().tolist() == (detections["classes"] + 1).tolist()
    note = (
        "same top-100 order; category id = TF class + 1"
        if same_ids
        else "top-100 order or category ids differ"
    )
    return [
        compare(
            "saved .pt -> DeepMACPredictor (deepmac predict): top-100 scores",
            inst.scores,
            detections["scores"],
            STACK_BOUND,
            note,
        ),
        compare(
            "saved .pt -> DeepMACPredictor (deepmac predict): top-100 boxes (pixels)",
            inst.boxes,
            detections["boxes"],
            4 * STACK_BOUND,
            "mask-head BNs fused",
        ),
    ]


def _check_stack(model, ours, ns, image, boxes, size) -> tuple[list[ParityRow], dict]:
    """Rows of the whole stack on ``image``, and the TF top-100 detections (see
    ``_check_predictor``)."""
    import tensorflow as tf

    pre, shapes = model.preprocess(tf.constant(image[None].astype(np.float32)))
    pred = model.predict(pre, shapes)
    rgb = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]
    rows = [
        compare(
            "preprocess: BGR, official means/stds (TF) vs our RGB normalize",
            ours.normalize(rgb)[:, [2, 1, 0]].permute(0, 2, 3, 1),
            pre.numpy(),
            HEAD_BOUND,
            f"{size}x{size} image",
        )
    ]
    with torch.no_grad():
        feats = ours.backbone(ours.normalize(rgb))
        maps = {
            "object_center": [h(x) for h, x in zip(ours.heatmap_heads, feats, strict=True)],
            "box/scale": [h(x) for h, x in zip(ours.size_heads, feats, strict=True)],
            "box/offset": [h(x) for h, x in zip(ours.offset_heads, feats, strict=True)],
            ns["INSTANCE_EMBEDDING"]: [
                h(x) for h, x in zip(ours.instance_heads, feats, strict=True)
            ],
            ns["PIXEL_EMBEDDING"]: [h(x) for h, x in zip(ours.pixel_heads, feats, strict=True)],
        }
    names = {
        "object_center": "heatmap logits",
        "box/scale": "box size",
        "box/offset": "box offset",
        ns["INSTANCE_EMBEDDING"]: "instance embedding",
        ns["PIXEL_EMBEDDING"]: "pixel embedding",
    }
    for key, label in names.items():
        for s in range(2):
            rows.append(
                compare(
                    f"whole stack: {label}, stack {s + 1}",
                    maps[key][s].permute(0, 2, 3, 1),
                    pred[key][s].numpy(),
                    STACK_BOUND,
                )
            )

    # Mask logits at the given boxes, exactly as _postprocess_sample composes them.
    norm = boxes[:, [1, 0, 3, 2]] / np.float32(size)  # (N, 4) normalised yxyx
    pixel = pred[ns["PIXEL_EMBEDDING"]][-1][0]
    instance = pred[ns["INSTANCE_EMBEDDING"]][-1][0]
    mask_input = model._get_mask_head_input(tf.constant(norm), pixel)
    inst = model._get_instance_embeddings(tf.constant(norm), instance)
    ref_logits = model._mask_net(inst, mask_input, training=False).numpy()  # (N, 32, 32)
    with torch.no_grad():
        features = EmbeddingFeatures.from_maps(
            maps[ns["PIXEL_EMBEDDING"]][-1], maps[ns["INSTANCE_EMBEDDING"]][-1], (size, size)
        )
        logits = ours.mask_branch(features, torch.from_numpy(boxes), None)[:, 0]
    rows.append(
        compare(
            "whole stack: mask logits at the image's boxes",
            logits,
            ref_logits,
            STACK_BOUND,
            f"{len(boxes)} boxes, mask head {ours.mask_branch.head_name}",
        )
    )

    # Detections and their masks: official postprocess vs our eval forward (square input, no
    # padding, so the two clipping conventions coincide).
    det = model.postprocess(pred, shapes)
    ours.eval()
    with torch.no_grad():
        out = ours(rgb)
    (d,) = out.detections
    tf_boxes = det["detection_boxes_strided"][0].numpy()[:, [1, 0, 3, 2]] * 4.0  # input px
    tf_classes = det["detection_classes"][0].numpy()
    same = bool((d.labels.numpy() == tf_classes).all())
    note = "same top-100 order and classes" if same else "top-100 order differs"
    rows += [
        compare(
            "whole stack: top-100 detection scores",
            d.scores,
            det["detection_scores"][0].numpy(),
            STACK_BOUND,
            note,
        ),
        compare(
            "whole stack: top-100 detection boxes (input pixels)",
            d.boxes,
            tf_boxes,
            4 * STACK_BOUND,
            "stride 4: 1e-3 output-map pixels",
        ),
        compare(
            "whole stack: detection masks (sigmoid) of the top-100",
            out.mask_logits[-1][:, 0].sigmoid(),
            det["detection_masks"][0].numpy(),
            STACK_BOUND,
        ),
    ]
    detections = {
        "scores": det["detection_scores"][0].numpy(),
        "boxes": tf_boxes,
        "classes": tf_classes.astype(np.int64),
    }
    return rows, detections


def _check_saved_model(model, conversion, workdir: Path, size: int) -> ParityRow:
    """Export ``model`` as a SavedModel (a module holding it as ``_model``, the attribute
    ``exporter_lib_v2`` uses), convert that, and compare every tensor with ``conversion``."""
    import tensorflow as tf

    class Exported(tf.Module):
        def __init__(self, detection_model):
            super().__init__()
            self._model = detection_model

        @tf.function(input_signature=[tf.TensorSpec([1, size, size, 3], tf.float32)])
        def __call__(self, images):
            pre, shapes = self._model.preprocess(images)
            return self._model.postprocess(self._model.predict(pre, shapes), shapes)

    exported = Exported(model)
    tf.saved_model.save(exported, str(workdir / "saved_model"))
    from_saved = convert(workdir / "saved_model", "deepmac", image_size=size)
    a, b = conversion.model.state_dict(), from_saved.model.state_dict()
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    same_keys = set(a) == set(b) and conversion.report.consumed.keys() != set()
    return ParityRow(
        "SavedModel conversion vs checkpoint conversion (every tensor)",
        diff if same_keys else float("inf"),
        0.0,
        0.0,
        f"{len(from_saved.report.consumed)} variables named through the object graph",
    )
