"""Tests of deepmac.data: COCO parsing and errors, collation, loaders, demo sample, real subsets."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepmac.data import (
    VOC_CATEGORY_IDS,
    CocoInstances,
    ResizePad,
    build_eval_loader,
    build_train_loader,
    build_train_transforms,
    collate_instances,
    demo_data_root,
)
from deepmac.structures import box_iou

# --------------------------------------------------------------------------- synthetic COCO
CATEGORIES = [{"id": 8, "name": "truck"}, {"id": 1, "name": "person"}]  # unsorted on purpose


def _square(x: float, y: float, w: float, h: float) -> list[float]:
    return [x, y, x + w, y, x + w, y + h, x, y + h]


def write_coco(
    root: Path,
    annotations: list[dict] | None = None,
    images: list[dict] | None = None,
    categories: list[dict] | None = None,
) -> Path:
    """Write ``root/annotations/instances_train2017.json`` and grey JPEG-free PNG images."""
    images = (
        images
        if images is not None
        else [{"id": 1, "file_name": "a.png", "height": 20, "width": 30}]
    )
    if annotations is None:
        annotations = [
            {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [2, 3, 10, 5],
             "segmentation": [_square(2, 3, 10, 5)]},
            {"id": 11, "image_id": 1, "category_id": 8, "iscrowd": 0, "bbox": [20, 0, 4, 20],
             "segmentation": {"size": [20, 30], "counts": "0"}},  # replaced below
            {"id": 12, "image_id": 1, "category_id": 8, "iscrowd": 1, "bbox": [0, 0, 1.5, 2],
             "segmentation": {"size": [20, 30], "counts": [0, 2, 18, 2, 578]}},
        ]  # fmt: skip
        # A compressed RLE (string counts) of columns 20..23, rows 0..19.
        from pycocotools import mask as mask_utils

        dense = np.zeros((20, 30), dtype=np.uint8, order="F")
        dense[:, 20:24] = 1
        rle = mask_utils.encode(dense)
        annotations[1]["segmentation"] = {"size": [20, 30], "counts": rle["counts"].decode()}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "train2017").mkdir(exist_ok=True)
    for img in images:
        Image.new("RGB", (img["width"], img["height"]), (10, 20, 30)).save(
            root / "train2017" / img["file_name"]
        )
    coco = {"images": images, "annotations": annotations, "categories": categories or CATEGORIES}
    path = root / "annotations" / "instances_train2017.json"
    path.write_text(json.dumps(coco))
    return path


def test_synthetic_item(tmp_path: Path) -> None:
    write_coco(tmp_path)
    ds = CocoInstances(tmp_path, "train2017", mask_split="voc")
    assert ds.category_ids == (1, 8) and ds.category_names == ("person", "truck")
    assert ds.contiguous_to_category_id == {0: 1, 1: 8}
    assert ds.category_id_to_contiguous == {1: 0, 8: 1}
    image, target = ds[0]
    assert image.shape == (3, 20, 30) and image.dtype == torch.float32
    assert image[:, 0, 0].tolist() == [10.0, 20.0, 30.0]
    assert target["boxes"].tolist() == [[2, 3, 12, 8], [20, 0, 24, 20]]
    assert target["labels"].tolist() == [0, 1] and target["labels"].dtype == torch.int64
    assert target["has_mask"].tolist() == [True, False]  # person is VOC, truck is not
    masks = target["gt_masks"]
    assert masks.dtype == torch.bool and masks.shape == (2, 20, 30)
    assert masks[1].sum() == 80 and masks[1][:, 20:24].all()
    ys, xs = torch.nonzero(masks[0], as_tuple=True)
    assert (xs.min(), ys.min()) == (2, 3) and abs(int(xs.max()) - 11) <= 1
    # Uncompressed crowd RLE (column-major runs): 2 pixels in column 0, 2 in column 1.
    assert target["crowd_masks"].shape == (1, 20, 30)
    assert torch.nonzero(target["crowd_masks"][0]).tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert target["crowd_labels"].tolist() == [1]
    assert target["image_id"] == 1 and target["orig_size"] == target["size"] == (20, 30)
    assert [t.tolist() for t in ds.instance_labels(0)] == [[0, 1], [1]]


def test_explicit_paths_and_all_split(tmp_path: Path) -> None:
    ann_file = write_coco(tmp_path)
    ds = CocoInstances(ann_file=ann_file, image_dir=tmp_path / "train2017", mask_split="all")
    assert ds[0][1]["has_mask"].tolist() == [True, True]
    assert CocoInstances(tmp_path, mask_split=[8])[0][1]["has_mask"].tolist() == [False, True]


def test_images_without_annotations(tmp_path: Path) -> None:
    write_coco(tmp_path, annotations=[])
    ds = CocoInstances(tmp_path)
    image, target = ResizePad(16)(*ds[0])
    assert target["boxes"].shape == (0, 4) and target["gt_masks"].shape == (0, 16, 16)
    assert target["crowd_masks"].shape == (0, 16, 16) and target["has_mask"].shape == (0,)
    assert len(CocoInstances(tmp_path, skip_empty=True)) == 0


def test_degenerate_boxes_dropped_with_one_warning(tmp_path: Path) -> None:
    images = [{"id": i, "file_name": f"{i}.png", "height": 20, "width": 30} for i in (1, 2)]
    bad = ([0, 0, 1, 5], [0, 0, 5, 0.5], [float("nan"), 0, 5, 5], [3, 3, 5, 5])
    annotations = [
        {"id": k, "image_id": 1 + k % 2, "category_id": 1, "iscrowd": 0, "bbox": list(b),
         "segmentation": [_square(3, 3, 5, 5)]}
        for k, b in enumerate(bad)
    ]  # fmt: skip
    write_coco(tmp_path, annotations, images)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoInstances(tmp_path)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "dropped 3 annotation" in messages[0]
    assert ds.num_dropped_boxes == 3
    assert sum(len(ds.instance_labels(i)[0]) for i in range(len(ds))) == 1


@pytest.mark.parametrize(
    ("edit", "error", "pattern"),
    [
        (lambda c: c.pop("annotations"), ValueError, r"missing \['annotations'\]"),
        (lambda c: c["annotations"][0].update(image_id=99), ValueError, "image id 99"),
        (lambda c: c["annotations"][0].update(category_id=5), ValueError, "category id 5"),
        (lambda c: c["annotations"][0].update(segmentation=[[1, 2, 3, 4]]), ValueError,
         r"polygon with 4 coordinates; expected an even number >= 6"),
        (lambda c: c["annotations"][0].update(segmentation={"size": [5, 5], "counts": "0"}),
         ValueError, r"RLE of size \[5, 5\], expected"),
        (lambda c: c["images"][0].pop("height"), ValueError, r"lacks keys \['height'\]"),
    ],
)  # fmt: skip
def test_bad_annotations(tmp_path: Path, edit, error, pattern) -> None:
    path = write_coco(tmp_path)
    coco = json.loads(path.read_text())
    edit(coco)
    path.write_text(json.dumps(coco))
    with pytest.raises(error, match=pattern):
        CocoInstances(tmp_path)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="instances_train2017.json"):
        CocoInstances(tmp_path)
    path = write_coco(tmp_path)
    path.write_text('{"images": [], "annotations": [,]}')
    with pytest.raises(ValueError, match=r"instances_train2017.json is not valid JSON.*line 1"):
        CocoInstances(tmp_path)
    write_coco(tmp_path)
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        CocoInstances(tmp_path, image_dir=tmp_path / "nope", ann_file=path)
    (tmp_path / "train2017" / "a.png").unlink()
    # Missing image files are found when the dataset opens, not when an item is drawn.
    with pytest.raises(FileNotFoundError, match=r"1 of 1 image file\(s\) not found .*a.png"):
        CocoInstances(tmp_path)
    (tmp_path / "train2017" / "a.png").write_bytes(b"not an image")
    ds = CocoInstances(tmp_path)
    with pytest.raises(ValueError, match=r"cannot decode image file .*a.png"):
        ds[0]
    Image.new("RGB", (31, 20)).save(tmp_path / "train2017" / "a.png")
    with pytest.raises(ValueError, match=r"is 20x31 \(HxW\) but .* says 20x30"):
        ds[0]


def test_bad_constructor_arguments(tmp_path: Path) -> None:
    write_coco(tmp_path)
    with pytest.raises(ValueError, match="root="):
        CocoInstances(ann_file=tmp_path / "x.json")
    with pytest.raises(ValueError, match="does not define"):
        CocoInstances(tmp_path, mask_split="1,2")


# --------------------------------------------------------------------------- collate, loaders
def test_collate_pads_and_keeps_sizes() -> None:
    batch = [
        (torch.ones(3, 4, 6), {"size": (4, 6)}),
        (torch.ones(3, 7, 5), {"size": (7, 5)}),
    ]
    images, targets = collate_instances(batch, size_divisibility=4)
    assert images.tensor.shape == (2, 3, 8, 8)
    assert images.image_sizes == [(4, 6), (7, 5)] and len(images) == 2
    assert images.tensor[0, :, :4, :6].eq(1).all() and images.tensor[0, :, 4:].eq(0).all()
    assert targets[1]["size"] == (7, 5)
    with pytest.raises(ValueError, match="empty batch"):
        collate_instances([])


def test_concat_requires_same_categories(tmp_path: Path) -> None:
    write_coco(tmp_path / "a")
    write_coco(tmp_path / "b", categories=[{"id": 1, "name": "person"}, {"id": 8, "name": "truck"},
                                           {"id": 3, "name": "car"}])  # fmt: skip
    a, a2, b = (
        CocoInstances(tmp_path / "a"),
        CocoInstances(tmp_path / "a"),
        CocoInstances(tmp_path / "b"),
    )
    loader = build_train_loader([a, a2], batch_size=2, seed=0)
    assert len(loader.dataset) == 2 and len(loader) == 1
    with pytest.raises(ValueError, match="share category ids"):
        build_train_loader([a, b], batch_size=1)
    with pytest.raises(ValueError, match="fewer than one batch"):
        build_train_loader(a, batch_size=4)


def _batches(root: Path, seed: int, num_batches: int = 3) -> list:
    ds = CocoInstances(root, "train2017", transforms=build_train_transforms(96))
    loader = build_train_loader(ds, batch_size=2, num_workers=2, seed=seed)
    out = []
    for (images, targets), _ in zip(loader, range(num_batches), strict=False):
        out.append((images.tensor, [(t["image_id"], t["boxes"], t["gt_masks"]) for t in targets]))
    return out


def _same(a: list, b: list) -> bool:
    for (ia, ta), (ib, tb) in zip(a, b, strict=True):
        if not torch.equal(ia, ib):
            return False
        for (ida, ba, ma), (idb, bb, mb) in zip(ta, tb, strict=True):
            if ida != idb or not torch.equal(ba, bb) or not torch.equal(ma, mb):
                return False
    return True


def test_train_loader_is_reproducible(coco_tiny_root: Path) -> None:
    first = _batches(coco_tiny_root, seed=3)
    assert _same(first, _batches(coco_tiny_root, seed=3))
    assert not _same(first, _batches(coco_tiny_root, seed=4))


def test_eval_loader_keeps_order() -> None:
    ds = CocoInstances(demo_data_root(), "val2017", transforms=ResizePad(64))
    ids = [t["image_id"] for _, targets in build_eval_loader(ds, batch_size=3) for t in targets]
    assert ids == ds.image_ids


# --------------------------------------------------------------------------- demo sample
def test_demo_sample() -> None:
    root = demo_data_root()
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert total <= 5_000_000
    attribution = (root / "ATTRIBUTION.md").read_text()
    assert "CC BY 4.0" in attribution
    for split, num_images in (("train2017", 16), ("val2017", 8)):
        coco = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
        assert len(coco["images"]) == num_images and len(coco["categories"]) == 80
        assert {img["license"] for img in coco["images"]} <= {4, 5, 7}
        assert all(img["file_name"] in attribution for img in coco["images"])
        ds = CocoInstances(root, split, mask_split="voc")
        ids = [ds.category_ids[int(x)] for i in range(len(ds)) for x in ds.instance_labels(i)[0]]
        num_voc = sum(c in VOC_CATEGORY_IDS for c in ids)
        assert num_voc >= 20 and len(ids) - num_voc >= 20
    image, target = CocoInstances(root, "val2017", mask_split="nonvoc")[0]
    assert image.shape[1:] == target["gt_masks"].shape[1:]


# --------------------------------------------------------------------------- real subsets
# (non-crowd, crowd, VOC non-crowd) per split, from each subset's SOURCE.md.
SOURCE_COUNTS = {
    ("coco_tiny", "train2017"): (699, 6, 380),
    ("coco_tiny", "val2017"): (804, 11, 416),
    ("coco_mini", "train2017"): (731, 8, 364),
    ("coco_mini", "val2017"): (619, 5, 287),
}


@pytest.mark.parametrize(("subset", "split"), sorted(SOURCE_COUNTS))
def test_real_subset_counts(subset: str, split: str, request: pytest.FixtureRequest) -> None:
    root = request.getfixturevalue(f"{subset}_root")
    ds = CocoInstances(root, split, mask_split="voc")
    assert len(ds.category_ids) == 80 and ds.num_dropped_boxes == 0
    labels = [ds.instance_labels(i) for i in range(len(ds))]
    num_instances = sum(len(lab) for lab, _ in labels)
    num_crowd = sum(len(crowd) for _, crowd in labels)
    num_voc = sum(int(ds.class_has_mask[lab].sum()) for lab, _ in labels)
    assert (num_instances, num_crowd, num_voc) == SOURCE_COUNTS[subset, split]


def test_real_masks_match_boxes(coco_tiny_root: Path, coco_mini_root: Path) -> None:
    # Polygon rasterisation and COCO's float boxes differ by about a pixel; thin polygon tails
    # can make a few edges differ more, so the check is statistical plus an IoU floor.
    edge_errors, ious = [], []
    for root in (coco_tiny_root, coco_mini_root):
        ds = CocoInstances(root, "val2017", mask_split="voc")
        for index in (0, 7, 21):
            image, target = ds[index]
            assert image.shape[1:] == target["gt_masks"].shape[1:]
            assert image.shape[1:] == target["crowd_masks"].shape[1:]
            category_ids = [ds.category_ids[int(x)] for x in target["labels"]]
            assert target["has_mask"].tolist() == [c in VOC_CATEGORY_IDS for c in category_ids]
            for box, mask in zip(target["boxes"], target["gt_masks"], strict=True):
                ys, xs = torch.nonzero(mask, as_tuple=True)
                if len(xs) == 0:  # sub-pixel polygons may rasterise to nothing
                    continue
                mask_box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
                edge_errors.append(float((mask_box - box).abs().max()))
                ious.append(float(box_iou(mask_box[None], box[None])))
    assert len(edge_errors) > 20 and min(ious) > 0.75
    assert np.mean(np.array(edge_errors) <= 2.0) >= 0.95
