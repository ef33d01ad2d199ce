"""Data: the COCO dataset, joint transforms, collation, loaders and the class splits."""

from deepmac.data.class_splits import (
    COCO_CATEGORY_IDS,
    NONVOC_CATEGORY_IDS,
    SPLITS,
    VOC_CATEGORY_IDS,
    resolve_split,
)
from deepmac.data.coco import CocoInstances, Target, Transform, load_coco_json
from deepmac.data.collate import ImageBatch, collate_instances, targets_to
from deepmac.data.demo import demo_data_root
from deepmac.data.loaders import build_eval_loader, build_train_loader, concat_datasets, seed_worker
from deepmac.data.transforms import (
    ColorJitter,
    Compose,
    RandomHorizontalFlip,
    RandomSquareCropByScale,
    ResizePad,
    build_eval_transforms,
    build_train_transforms,
)

__all__ = [
    "COCO_CATEGORY_IDS",
    "NONVOC_CATEGORY_IDS",
    "SPLITS",
    "VOC_CATEGORY_IDS",
    "CocoInstances",
    "ColorJitter",
    "Compose",
    "ImageBatch",
    "RandomHorizontalFlip",
    "RandomSquareCropByScale",
    "ResizePad",
    "Target",
    "Transform",
    "build_eval_loader",
    "build_eval_transforms",
    "build_train_loader",
    "build_train_transforms",
    "collate_instances",
    "concat_datasets",
    "demo_data_root",
    "load_coco_json",
    "resolve_split",
    "seed_worker",
    "targets_to",
]
