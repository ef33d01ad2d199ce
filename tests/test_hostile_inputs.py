"""Hostile but realistic input (issue 17): no silent wrong result, no lost run, no traceback.

One test per row of the issue's table. Every bad file is made here, in ``tmp_path``; each
test checks that the message names what was expected and what was found, and that nothing
already saved changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pickle
import re
import stat
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_BOX_PROMPTED_OVERRIDES
from PIL import ExifTags, Image, ImageOps

from deepmac.cli.main import build_parser, main
from deepmac.config import ExperimentConfig, apply_overrides
from deepmac.config.presets import get_preset
from deepmac.data import CocoInstances, demo_data_root
from deepmac.engine import save_checkpoint
from deepmac.inference.prompts import load_box_prompts
from deepmac.inference.segmenter import BoxPromptedSegmenter, check_prompt_boxes
from deepmac.models.families import build_model

TINY = TINY_BOX_PROMPTED_OVERRIDES


#: ``deepmac train`` of the tiny model's preset, without a progress bar.
TRAIN = ("train", "box_prompted_demo", "--no-progress")


#: Every test here runs on two threads (the machine kind), whatever the session set.
pytestmark = pytest.mark.usefixtures("two_threads")


def tiny_config(*overrides: str) -> ExperimentConfig:
    return apply_overrides(get_preset("box_prompted_demo"), [*TINY, *overrides])


def write_checkpoint(
    path: Path, cfg: ExperimentConfig, *, weights: ExperimentConfig | None = None, step: int = 0
) -> Path:
    """A checkpoint of ``cfg`` (untrained), holding the weights of ``weights``' model."""
    torch.manual_seed(0)
    model = build_model((weights or cfg).model)
    save_checkpoint(
        path,
        model=model,
        optimizer=None,
        scheduler=None,
        step=step,
        config=cfg.to_dict(),
        model_type=model.model_type,
    )
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "last.pt", tiny_config())


def write_run(folder: Path, cfg: ExperimentConfig, *, step: int = 1) -> Path:
    """A run folder as ``deepmac train`` leaves it: last.pt, config.json, metrics.jsonl."""
    folder.mkdir(parents=True, exist_ok=True)
    write_checkpoint(folder / "last.pt", cfg, step=step)
    (folder / "config.json").write_text(json.dumps(cfg.to_dict()))
    (folder / "metrics.jsonl").write_text(json.dumps({"type": "train", "step": step}) + "\n")
    return folder


def digest(folder: Path) -> dict[str, str]:
    """Content hash of every file under ``folder``: what must not change."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def pattern_image(width: int, height: int) -> Image.Image:
    """An RGB image whose every pixel differs from its neighbours (frames are told apart)."""
    ys, xs = np.mgrid[0:height, 0:width]
    pixels = np.stack([xs * 4 % 256, ys * 4 % 256, (xs + ys) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels)


def save_rotated_jpeg(path: Path, width: int = 60, height: int = 40) -> Image.Image:
    """A phone photo: stored ``width`` x ``height`` with EXIF orientation 6 (rotate 90)."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    pattern_image(width, height).save(path, exif=exif, quality=95)
    return Image.open(path)


def write_coco(
    root: Path,
    images: list[dict],
    annotations: list[dict],
    *,
    split: str = "val2017",
    categories: list[dict] | None = None,
    make_files: bool = True,
) -> Path:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / split).mkdir(exist_ok=True)
    if make_files:
        for img in images:
            pattern_image(img["width"], img["height"]).save(root / split / img["file_name"])
    path = root / "annotations" / f"instances_{split}.json"
    categories = categories or [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}]
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return path


def square(x: float, y: float, w: float, h: float) -> list[list[float]]:
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def annotation(k: int, image_id: int, bbox: list[float], *, crowd: int = 0, cat: int = 1) -> dict:
    return {
        "id": k,
        "image_id": image_id,
        "category_id": cat,
        "iscrowd": crowd,
        "bbox": bbox,
        "area": bbox[2] * bbox[3],
        "segmentation": square(*bbox),
    }


def cli(*argv: object) -> int:
    """``deepmac ARGV...``: the exit status (paths may be given as paths)."""
    return main([str(a) for a in argv])


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[-1]


# ---------------------------------------------------------------- one image reader for all


def test_exif_orientation_is_applied_in_predict(tmp_path, checkpoint):
    """Row 1: boxes drawn on the displayed phone photo give masks in the displayed frame."""
    photo = tmp_path / "photos" / "000000000001.jpg"
    photo.parent.mkdir()
    save_rotated_jpeg(photo)  # stored 60 wide x 40 high, displayed 40 wide x 60 high
    before = digest(photo.parent)
    boxes = tmp_path / "boxes.json"
    # Inside the displayed 40x60 image; its lower half is outside the stored 60x40 frame.
    boxes.write_text(json.dumps([{"image_id": 1, "bbox": [5, 30, 30, 25], "category_id": 1}]))
    out = tmp_path / "masks.json"
    assert cli("predict", checkpoint, "--images", photo.parent, "--boxes", boxes, "--out", out) == 0
    (result,) = json.loads(out.read_text())
    assert result["segmentation"]["size"] == [60, 40]  # (H, W) as displayed
    assert result["bbox"] == [5.0, 30.0, 30.0, 25.0]  # not clipped to the stored frame
    assert digest(photo.parent) == before
    # The Python API takes a PIL image in its own pixel frame, and says so when it is rotated.
    with pytest.warns(UserWarning, match="EXIF orientation 6: its pixels are used as stored"):
        BoxPromptedSegmenter.from_checkpoint(checkpoint).predict(Image.open(photo), [[1, 1, 9, 9]])


def test_exif_orientation_in_a_coco_dataset_follows_the_json_size(tmp_path):
    """Row 1: the dataset takes the displayed frame when the JSON's size is the displayed
    one, the stored frame when it is the stored one, and refuses any other size."""
    stored = save_rotated_jpeg(tmp_path / "photo.jpg")
    displayed = ImageOps.exif_transpose(stored)
    for (height, width), expected in (((60, 40), displayed), ((40, 60), stored)):
        root = tmp_path / f"{height}x{width}"
        write_coco(
            root,
            [{"id": 1, "file_name": "photo.jpg", "height": height, "width": width}],
            [annotation(1, 1, [2, 2, 10, 10])],
            make_files=False,
        )
        (root / "val2017" / "photo.jpg").write_bytes((tmp_path / "photo.jpg").read_bytes())
        image, target = CocoInstances(root, "val2017")[0]
        assert tuple(image.shape) == (3, height, width)
        assert target["gt_masks"].shape[-2:] == (height, width)
        pixels = torch.from_numpy(np.array(expected.convert("RGB"))).permute(2, 0, 1).float()
        assert torch.equal(image, pixels)
    root = tmp_path / "wrong"
    write_coco(
        root,
        [{"id": 1, "file_name": "photo.jpg", "height": 50, "width": 50}],
        [annotation(1, 1, [2, 2, 10, 10])],
        make_files=False,
    )
    (root / "val2017" / "photo.jpg").write_bytes((tmp_path / "photo.jpg").read_bytes())
    with pytest.raises(
        ValueError,
        match=r"is 60x40 \(HxW\) as displayed, 40x60 as stored but .* "
        r"says 50x50",
    ):
        CocoInstances(root, "val2017").load_image(0)


def _palette_image(value: int) -> Image.Image:
    image = Image.new("P", (6, 4), 0)
    image.putpalette([value, value, value] * 256)
    return image


def _mode_files(folder: Path) -> dict[str, tuple[Path, int]]:
    """One 6x4 file per mode, and the 8-bit grey (or red) value it must read as."""
    grey = np.full((4, 6), 0.5)
    files: dict[str, tuple[Image.Image, str, int]] = {
        "L": (Image.fromarray(np.full((4, 6), 128, np.uint8)), "png", 128),
        "LA": (Image.new("LA", (6, 4), (128, 0)), "png", 128),
        "P": (_palette_image(128), "png", 128),
        "RGBA": (Image.new("RGBA", (6, 4), (128, 128, 128, 0)), "png", 128),
        "CMYK": (Image.new("CMYK", (6, 4), (0, 0, 0, 127)), "tif", 128),
        "I;16": (Image.fromarray((grey * 65535).astype(np.uint16)), "png", 128),
        "I": (Image.fromarray((grey * 65535).astype(np.int32)), "tif", 128),
        "F": (Image.fromarray(grey.astype(np.float32)), "tif", 128),
    }
    paths = {}
    for mode, (image, ext, value) in files.items():
        assert image.mode == mode
        path = folder / f"{mode.replace(';', '_')}.{ext}"
        image.save(path)
        paths[mode] = (path, value)
    return paths


def test_every_image_mode_reads_as_8bit_rgb(tmp_path):
    """Row 1 (16-bit PNG): L, LA, P, RGBA, CMYK, I;16, I and F all read as their 8-bit grey,
    16-bit data scaled (not clipped to white); out-of-range values are refused."""
    from deepmac.inference.segmenter import image_to_tensor

    root = tmp_path / "coco"
    (root / "val2017").mkdir(parents=True)
    paths = _mode_files(root / "val2017")
    images = [
        {"id": k, "file_name": p.name, "height": 4, "width": 6}
        for k, (p, _) in enumerate(paths.values())
    ]
    write_coco(root, images, [], make_files=False)
    dataset = CocoInstances(root, "val2017")
    for k, (mode, (path, value)) in enumerate(paths.items()):
        pixels = dataset.load_image(k)
        assert pixels.shape == (3, 4, 6)
        assert abs(float(pixels.mean()) - value) <= 1, (mode, float(pixels.mean()))
        # The Python API converts a PIL image of that mode the same way.
        api = image_to_tensor(Image.open(path))
        assert abs(float(api.mean()) - value) <= 1, (mode, float(api.mean()))
    Image.fromarray(np.full((4, 6), 70000, np.int32)).save(root / "val2017" / "I.tif")
    with pytest.raises(
        ValueError,
        match=r"I.tif has mode 'I' values in 70000..70000; expected "
        r"0..65535",
    ):
        dataset.load_image(list(paths).index("I"))
    Image.fromarray(np.full((4, 6), 2.0, np.float32)).save(root / "val2017" / "F.tif")
    with pytest.raises(ValueError, match=r"mode 'F' values in 2..2; expected 0..1"):
        dataset.load_image(list(paths).index("F"))


def test_images_over_the_pixel_limit_are_refused(tmp_path, monkeypatch):
    """Row 1 (decompression bombs): over ``PIL.Image.MAX_IMAGE_PIXELS`` is refused with the
    size found and the limit, also over twice it (where Pillow raises by itself)."""
    root = tmp_path / "coco"
    write_coco(root, [{"id": 1, "file_name": "a.png", "height": 20, "width": 20}], [])
    dataset = CocoInstances(root, "val2017")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)
    with pytest.raises(
        ValueError,
        match=r"a.png is 20x20 = 400 pixels; expected at most "
        r"PIL.Image.MAX_IMAGE_PIXELS = 300",
    ):
        dataset.load_image(0)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(
        ValueError,
        match=r"a.png: Image size \(400 pixels\) exceeds .*; expected "
        r"at most PIL.Image.MAX_IMAGE_PIXELS = 100 pixels",
    ):
        dataset.load_image(0)


def test_float_images_in_0_1_are_refused(checkpoint):
    """Row 3: a float image in [0, 1] through the Python API is refused, not read as a
    near-black 0..255 image; so are values outside 0..255 and NaN."""
    segmenter = BoxPromptedSegmenter.from_checkpoint(checkpoint)
    boxes = [[2.0, 2.0, 20.0, 20.0]]
    generator = torch.Generator().manual_seed(0)
    unit = torch.rand(3, 32, 40, generator=generator)
    for image in (unit, unit.permute(1, 2, 0).numpy().astype(np.float64)):
        with pytest.raises(
            ValueError,
            match=r"values in [\d.e-]+\.\.0\.\d+, which looks like a "
            r"0\.\.1-scaled image; expected RGB in 0\.\.255",
        ):
            segmenter.predict(image, boxes)
    with pytest.raises(ValueError, match=r"values in -\d.*; expected RGB in 0\.\.255"):
        segmenter.predict((unit - 0.5) * 255, boxes)  # normalised pixels
    with pytest.raises(ValueError, match="non-finite values; expected RGB in 0..255"):
        segmenter.predict(torch.full((3, 32, 40), math.nan), boxes)
    assert segmenter.predict(unit * 255, boxes)[0].shape == (1, 32, 40)


# ---------------------------------------------------------------- evaluation


def test_eval_scores_images_without_instances(tmp_path, checkpoint, capsys):
    """Row 4: images with only crowd regions, or nothing at all, count as no instances."""
    root = tmp_path / "coco"
    images = [{"id": i, "file_name": f"{i}.png", "height": 40, "width": 50} for i in (1, 2, 3)]
    annotations = [annotation(1, 1, [5, 5, 20, 20]), annotation(2, 2, [5, 5, 20, 20], crowd=1)]
    write_coco(root, images, annotations)
    out = tmp_path / "metrics.json"
    assert cli("eval", checkpoint, "--data-root", root, "--out", out, "--no-progress") == 0
    metrics = json.loads(out.read_text())
    assert metrics["mask_iou/all/num_instances"] == 1
    assert metrics["bbox/all/AP"] == pytest.approx(1.0)


# ---------------------------------------------------------------- training runs


def test_train_into_a_folder_holding_a_run_is_refused(tmp_path, capsys):
    """Row 5: without --resume, a folder holding a run is refused (exit 2) and left as it
    was; --overwrite replaces it and its metrics.jsonl does not mix two runs."""
    run = write_run(tmp_path / "run", tiny_config())
    before = digest(run)
    assert cli(*TRAIN, "--out", run, "--steps", "1", *TINY) == 2
    line = error_line(capsys)
    assert line.startswith("deepmac train: error: --out ")
    assert "already holds a run (last.pt, config.json, metrics.jsonl)" in line
    assert "--resume" in line and "--overwrite" in line
    assert digest(run) == before
    assert cli(*TRAIN, "--out", run, "--steps", "1", "--overwrite", *TINY) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1] and "loss" in records[0]
    # The demo replaces an earlier demo, but not another run.
    before = digest(run)
    assert cli("demo", "--out", run, "--steps", "1", "--no-progress") == 2
    assert "holds a run that is not a demo (last.pt, config.json, metrics.jsonl)" in error_line(
        capsys
    )
    assert digest(run) == before


def test_resume_with_overrides_that_change_the_model_is_refused(tmp_path, capsys):
    """Row 10: --resume with a model override: one line naming the key, both values."""
    run = write_run(tmp_path / "run", tiny_config())
    before = digest(run)
    assert (
        cli(*TRAIN, "--out", run, "--resume", "model.mask_head=hourglass20", "train.steps=3") == 2
    )
    line = error_line(capsys)
    assert "model.mask_head: run 'resnet4', given 'hourglass20'" in line
    assert "expected only training settings such as train.steps" in line
    assert digest(run) == before


def test_checkpoint_whose_config_does_not_fit_its_weights(tmp_path, capsys):
    """Row 11: predict and --resume on weights that the saved config cannot hold: one line
    with what the model expects and what the checkpoint has."""
    cfg = tiny_config()
    other = tiny_config("model.embedding_head_channels=8")
    run = tmp_path / "run"
    write_run(run, cfg)
    write_checkpoint(run / "last.pt", cfg, weights=other, step=1)
    before = digest(run)
    image = tmp_path / "images" / "000000000001.png"
    image.parent.mkdir()
    pattern_image(40, 30).save(image)
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps([{"image_id": 1, "bbox": [1, 1, 9, 9], "category_id": 1}]))
    assert (
        cli(
            "predict",
            run / "last.pt",
            "--images",
            image,
            "--boxes",
            boxes,
            "--out",
            tmp_path / "m.json",
        )
        == 1
    )
    line = error_line(capsys)
    assert "do not fit the model its config describes" in line
    assert "the model expects (16," in line and "found (8," in line
    assert cli(*TRAIN, "--out", run, "--resume") == 1
    line = error_line(capsys)
    assert "do not fit the model of the config" in line and "the model expects (16," in line
    assert digest(run) == before
    assert not (tmp_path / "m.json").exists()


def test_missing_image_files_are_found_when_the_dataset_opens(tmp_path, capsys):
    """Row 13: an annotation pointing to a missing image fails at once, naming the file,
    before any training step or checkpoint."""
    root = tmp_path / "coco"
    images = [{"id": i, "file_name": f"{i}.png", "height": 40, "width": 50} for i in (1, 2, 3)]
    write_coco(
        root, images, [annotation(i, i, [5, 5, 20, 20]) for i in (1, 2, 3)], split="train2017"
    )
    (root / "train2017" / "3.png").unlink()
    with pytest.raises(
        FileNotFoundError,
        match=r"1 of 3 image file\(s\) not found \(first: "
        r".*train2017/3.png\); expected every image",
    ):
        CocoInstances(root, "train2017")
    run = tmp_path / "run"
    assert cli(*TRAIN, "--data-root", root, "--out", run, "--steps", "4", *TINY) == 1
    assert "3.png" in error_line(capsys)
    assert not run.exists() or digest(run) == {}


def test_a_training_set_without_annotations_is_refused(tmp_path, capsys):
    """Row 14: zero annotations (or, for the box-prompted model, zero masks of the
    mask-supervised classes) is refused before anything is written."""
    root = tmp_path / "coco"
    images = [{"id": i, "file_name": f"{i}.png", "height": 40, "width": 50} for i in (1, 2)]
    write_coco(root, images, [], split="train2017")
    run = tmp_path / "run"
    command = [*TRAIN, "--data-root", root, "--out", run, "--steps", "1", *TINY]
    assert cli(*command) == 1
    line = error_line(capsys)
    assert "2 image(s) and 0 annotations" in line and "expected annotated objects" in line
    assert not run.exists() or digest(run) == {}
    # Boxes only of a class without mask supervision (toothbrush is not a VOC class).
    no_mask = [annotation(1, 1, [5, 5, 20, 20], cat=90)]
    write_coco(
        root, images, no_mask, split="train2017", categories=[{"id": 90, "name": "toothbrush"}]
    )
    assert cli(*command) == 1
    line = error_line(capsys)
    assert "no annotation of the mask-supervised classes (data.mask_split=voc)" in line
    assert not run.exists() or digest(run) == {}


def test_stale_temp_files_are_removed_and_the_folder_fsynced(tmp_path, monkeypatch):
    """Row 15: temp files of interrupted writes go at the next start; renames are made
    durable by an fsync of the folder."""
    cfg = tiny_config("train.steps=1")
    run = write_run(tmp_path / "run", cfg, step=1)
    stale = [run / ".last.pt.k2j3h4.tmp", run / ".config.json.abc.tmp"]
    for path in stale:
        path.write_bytes(b"\0" * 1024)
    synced_folders = []
    real_fsync = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            synced_folders.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    checkpoint_before = (run / "last.pt").read_bytes()
    assert cli(*TRAIN, "--out", run, "--resume") == 0
    assert not any(p.exists() for p in stale)
    assert synced_folders  # config.json was rewritten at the start, then its folder synced
    assert (run / "last.pt").read_bytes() == checkpoint_before  # nothing left to train


# ---------------------------------------------------------------- prompts and COCO fields


def _photo_and_boxes(tmp_path: Path, entries: list[dict]) -> tuple[Path, Path]:
    folder = tmp_path / "images"
    folder.mkdir()
    pattern_image(64, 48).save(folder / "000000000001.png")
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps(entries))  # json writes NaN and Infinity as Python reads them
    return folder, boxes


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nonfinite_prompt_boxes_are_refused_naming_box_and_image(tmp_path, checkpoint, capsys, bad):
    """Row 7: NaN / inf in a box: refused, naming the entry, its image and the field."""
    entries = [
        {"image_id": 1, "bbox": [1, 2, 10, 10], "category_id": 1},
        {"image_id": 1, "bbox": [4, bad, 10, 10], "category_id": 1},
    ]
    folder, boxes = _photo_and_boxes(tmp_path, entries)
    out = tmp_path / "masks.json"
    assert cli("predict", checkpoint, "--images", folder, "--boxes", boxes, "--out", out) == 1
    line = error_line(capsys)
    assert "boxes.json: entry 1 (image id 1, 000000000001.png) field 'bbox'" in line
    assert f"expected [x, y, w, h] of 4 finite numbers, found [4, {bad}, 10, 10]" in line
    assert not out.exists()
    with pytest.raises(
        ValueError,
        match=r"1 box\(es\) have non-finite coordinates \(indices "
        r"\[1\]",
    ):
        check_prompt_boxes([[1, 2, 3, 4], [0, 0, bad, 5]], (48, 64))


def test_xyxy_boxes_given_as_xywh_are_warned_about(tmp_path, checkpoint, caplog):
    """Row 6: most boxes running past the image edge as [x, y, w, h]: "are these xyxy?"."""
    xyxy = [[30, 20, 60, 45], [10, 10, 50, 40], [5, 5, 20, 15]]
    entries = [{"image_id": 1, "bbox": b, "category_id": 1} for b in xyxy]
    folder, boxes = _photo_and_boxes(tmp_path, entries)
    with caplog.at_level(logging.WARNING, logger="deepmac"):
        assert (
            cli(
                "predict",
                checkpoint,
                "--images",
                folder,
                "--boxes",
                boxes,
                "--out",
                tmp_path / "m.json",
            )
            == 0
        )
    (warning,) = [r.getMessage() for r in caplog.records if "xyxy" in r.getMessage()]
    assert "2 of 3 boxes run past their image's edge as [x, y, width, height]" in warning
    assert "are these xyxy?" in warning


@pytest.mark.parametrize(
    ("edit", "where", "found"),
    [
        (
            lambda c: c["annotations"][1].update(category_id="person"),
            r"annotations\[1\]( \(image id 2, 2.png\))? field 'category_id'",
            "expected an integer, found 'person'",
        ),
        (
            lambda c: c["annotations"][0].update(image_id=None),
            r"annotations\[0\] field 'image_id'",
            "expected an integer, found None",
        ),
        (
            lambda c: c["images"][1].pop("file_name"),
            r"images\[1\] lacks keys \['file_name'\]|images\[1\] has no field 'file_name'",
            r"expected",
        ),
        (
            lambda c: c["categories"][0].pop("name"),
            r"categories\[0\] has no field 'name'",
            "expected a non-empty string",
        ),
    ],
)
def test_coco_fields_of_the_wrong_type_name_file_entry_and_field(
    tmp_path, checkpoint, capsys, edit, where, found
):
    """Row 8: in a dataset JSON and in a boxes JSON for predict, one line naming the file,
    the entry index and the field."""
    root = tmp_path / "coco"
    images = [{"id": i, "file_name": f"{i}.png", "height": 40, "width": 50} for i in (1, 2)]
    path = write_coco(
        root, images, [annotation(1, 1, [5, 5, 20, 20]), annotation(2, 2, [5, 5, 20, 20])]
    )
    coco = json.loads(path.read_text())
    edit(coco)
    path.write_text(json.dumps(coco))
    pattern = rf"instances_val2017.json: (?:{where}).*{found}"
    with pytest.raises(ValueError, match=pattern):
        CocoInstances(root, "val2017")
    with pytest.raises(ValueError, match=pattern):
        load_box_prompts(path, ["1.png", "2.png"])
    # Through the CLI: one line, no KeyError traceback.
    assert (
        cli(
            "predict",
            checkpoint,
            "--images",
            root / "val2017",
            "--boxes",
            path,
            "--out",
            tmp_path / "m.json",
        )
        == 1
    )
    assert "instances_val2017.json:" in error_line(capsys)
    if "file_name" not in where:  # the ground truth of score needs no file names
        results = tmp_path / "results.json"
        results.write_text("[]")
        assert cli("score", results, "--gt", path) == 1
        assert re.search(pattern, error_line(capsys))


# ---------------------------------------------------------------- output paths


def test_output_paths_are_checked_before_any_work(tmp_path, checkpoint, capsys, monkeypatch):
    """Row 9: --out a folder, under a file or unwritable, --viz a file: refused (exit 2)
    before the first image is segmented; nothing that exists changes."""
    folder, boxes = _photo_and_boxes(
        tmp_path, [{"image_id": 1, "bbox": [1, 2, 10, 10], "category_id": 1}]
    )

    def no_inference(*args, **kwargs):
        raise AssertionError("inference ran before the output paths were checked")

    monkeypatch.setattr(BoxPromptedSegmenter, "predict", no_inference)
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("keep me")
    (tmp_path / "outdir").mkdir()
    before = digest(tmp_path)
    predict = ["predict", str(checkpoint), "--images", str(folder), "--boxes", str(boxes)]
    cases = [
        (["--out", str(tmp_path / "outdir")], "outdir is a folder; expected a file path"),
        (["--out", str(a_file / "m.json")], "a_file.txt is a file; expected a folder"),
        (
            ["--out", str(tmp_path / "m.json"), "--viz", str(a_file)],
            "--viz " + str(a_file) + " is a file; expected a folder",
        ),
    ]
    if Path("/sys").is_dir():  # a folder nobody may write in, root included
        cases.append((["--out", "/sys/m.json"], "cannot write in /sys"))
    for extra, message in cases:
        assert cli(*predict, *extra) == 2
        line = error_line(capsys)
        assert line.startswith("deepmac predict: error: ") and message in line
    assert cli("eval", checkpoint, "--out", tmp_path / "outdir") == 2
    assert "is a folder; expected a file path" in error_line(capsys)
    assert cli("score", boxes, "--gt", boxes, "--out", tmp_path) == 2
    assert "is a folder; expected a file path" in error_line(capsys)
    assert cli("export", checkpoint, "--onnx", a_file / "m.onnx") == 2
    assert "a_file.txt is a file" in error_line(capsys)
    assert cli("train", "box_prompted_demo", "--out", a_file) == 2
    assert "--out " + str(a_file) + " is a file; expected a folder" in error_line(capsys)
    assert digest(tmp_path) == before


# ---------------------------------------------------------------- score, folders, arguments


def test_score_refuses_garbage_rle_and_nan_scores(tmp_path, capsys):
    """Row 16: results whose RLE runs do not add up, or whose score is NaN, are refused
    naming the entry, not scored."""
    gt = write_coco(
        tmp_path / "coco",
        [{"id": 1, "file_name": "1.png", "height": 20, "width": 30}],
        [annotation(1, 1, [2, 2, 10, 10])],
    )
    from pycocotools import mask as mask_utils

    dense = np.zeros((20, 30), dtype=np.uint8, order="F")
    dense[2:12, 2:12] = 1
    counts = mask_utils.encode(dense)["counts"].decode()
    good = {
        "image_id": 1,
        "category_id": 1,
        "score": 0.9,
        "bbox": [2, 2, 10, 10],
        "segmentation": {"size": [20, 30], "counts": counts},
    }
    cases = [
        (
            {"counts": "0"},
            "entry 1 field 'segmentation': expected RLE runs adding up to 20x30 "
            "= 600 pixels, found 1 runs adding up to 0",
        ),
        (
            {"counts": "garbage!"},
            "entry 1 field 'segmentation': expected COCO RLE counts, found garbage",
        ),
        ({"score": math.nan}, "entry 1 field 'score': expected a finite number, found nan"),
    ]
    for change, message in cases:
        bad = json.loads(json.dumps(good))
        if "counts" in change:
            bad["segmentation"]["counts"] = change["counts"]
        else:
            bad.update(change)
        results = tmp_path / "results.json"
        results.write_text(json.dumps([good, bad]))
        out = tmp_path / "scored.json"
        assert cli("score", results, "--gt", gt, "--out", out) == 1
        assert message in error_line(capsys)
        assert not out.exists()


def test_only_readable_image_files_are_images(tmp_path, checkpoint, caplog):
    """Row 17: a 0-byte .png and a folder named x.jpg are no images: named in one warning."""
    folder, boxes = _photo_and_boxes(
        tmp_path, [{"image_id": 1, "bbox": [1, 2, 10, 10], "category_id": 1}]
    )
    (folder / "000000000002.png").write_bytes(b"")
    (folder / "x.jpg").mkdir()
    out = tmp_path / "m.json"
    with caplog.at_level(logging.WARNING, logger="deepmac"):
        assert cli("predict", checkpoint, "--images", folder, "--boxes", boxes, "--out", out) == 0
    (warning,) = [r.getMessage() for r in caplog.records if "not readable images" in r.getMessage()]
    assert (
        "2 path(s)" in warning and "000000000002.png" in warning and "x.jpg (a folder)" in warning
    )
    assert [r["image_id"] for r in json.loads(out.read_text())] == [1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["eval", "c.pt", "--max-images", "-3"],
            "argument --max-images: expected an integer >= 0, found -3",
        ),
        (
            ["export", "c.pt", "--onnx", "m.onnx", "--opset", "3"],
            "argument --opset: expected an integer >= 18, found 3",
        ),
        (
            ["predict", "c.pt", "--images", "x", "--out", "m.json", "--score-threshold", "7"],
            "argument --score-threshold: expected a number in [0, 1], found 7",
        ),
    ],
)
def test_arguments_out_of_range_are_usage_errors(argv, message, capsys):
    """Row 18: range checks at argparse level: exit 2 with the expected range and the value."""
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert f"deepmac {argv[0]}: error: {message}" in capsys.readouterr().err


def test_a_file_that_is_no_checkpoint_gets_our_own_message(tmp_path, capsys):
    """Row 19: never torch's advice to retry with weights_only=False."""
    pickled = tmp_path / "pickled.pt"
    pickled.write_bytes(pickle.dumps({"a": Fraction(1, 3)}))
    saved = tmp_path / "saved.pt"
    torch.save({"a": Fraction(1, 3)}, saved)
    text = tmp_path / "text.pt"
    text.write_text("hello")
    for path in (pickled, saved, text):
        before = path.read_bytes()
        assert cli("eval", path) == 1
        line = error_line(capsys)
        assert f"{path} is not a readable deepmac checkpoint" in line
        assert "expected a file written by deepmac train or deepmac convert-tf" in line
        assert "weights_only" not in line and "trust" not in line
        assert path.read_bytes() == before
    assert cli("eval", saved) == 1
    assert "(fractions.Fraction)" in error_line(capsys)


def test_expected_failures_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    """The CLI boundary: exit 2 for usage, 1 for runtime (an OSError too), one line each;
    --debug lets the exception through."""
    assert cli("train", "--no-progress") == 2
    assert (
        error_line(capsys) == "deepmac train: error: train needs a PRESET (see deepmac "
        "train --list) or --config FILE.json"
    )
    results = tmp_path / "r.json"
    results.write_text("[]")
    assert cli("score", results, "--gt", tmp_path) == 1  # a folder: IsADirectoryError
    line = error_line(capsys)
    assert line.startswith("deepmac score: error: ") and str(tmp_path) in line
    with pytest.raises(IsADirectoryError):
        cli("--debug", "score", results, "--gt", tmp_path)
    with pytest.raises(IsADirectoryError):
        cli("score", results, "--gt", tmp_path, "--debug")


# ---------------------------------------------------------------- memory of huge images

_PEAK_RSS = """
import resource, sys
from deepmac.cli.main import main
status = main(sys.argv[1:])
print("PEAK_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "STATUS", status)
"""


def _predict_peak_mb(checkpoint: Path, image: Path, boxes: int, out: Path) -> float:
    """Peak resident memory of ``deepmac predict`` on ``image`` with ``boxes`` large boxes."""
    rows = ["image,x1,y1,x2,y2"]
    rows += [f"{image.name},{10 + k},{20 + k},{5000 + k},{3800 - k}" for k in range(boxes)]
    csv_file = out.with_suffix(".csv")
    csv_file.write_text("\n".join(rows) + "\n")
    argv = ["predict", checkpoint, "--images", image, "--boxes", csv_file, "--out", out]
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, *map(str, argv), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    words = done.stdout.split()
    assert words[words.index("STATUS") + 1] == "0", done.stdout + done.stderr
    return int(words[words.index("PEAK_KB") + 1]) / 1024


def test_predict_memory_does_not_grow_with_the_box_count(tmp_path, checkpoint):
    """A 6000x4000 image holds 24 MB per mask. Holding every mask of the image at once (the
    code before), 60 boxes peaked at 4.6 GB against 0.95 GB for 6 (67 MB more per box);
    encoded per chunk, both peaked at 0.84 GB. Here 4 and 24 boxes: 1.3 GB apart before."""
    image = tmp_path / "huge.jpg"
    Image.new("RGB", (6000, 4000), (90, 120, 150)).save(image, quality=80)
    few = _predict_peak_mb(checkpoint, image, 4, tmp_path / "few.json")
    many = _predict_peak_mb(checkpoint, image, 24, tmp_path / "many.json")
    assert many - few < 250, (few, many)  # 20 more masks held at once: over 1 GB more
    assert len(json.loads((tmp_path / "many.json").read_text())) == 24


# ---------------------------------------------------------------- outputs never replace inputs


def test_predict_refuses_to_write_over_its_boxes_file_or_images(tmp_path, checkpoint, capsys):
    """Found in the second hostile round: --out = --boxes replaced the annotations with the
    masks, and --viz = a folder of PNG photos replaced the photos with overlays."""
    photos = tmp_path / "photos"
    photos.mkdir()
    pattern_image(64, 48).save(photos / "a.png")
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("image,x1,y1,x2,y2\na.png,4,4,40,30\n")
    before = digest(tmp_path)
    assert cli("predict", checkpoint, "--images", photos, "--boxes", boxes, "--out", boxes) == 2
    assert error_line(capsys).endswith("is the --boxes file; expected a new file for the output")
    out = tmp_path / "masks.json"
    argv = ["predict", checkpoint, "--images", photos, "--boxes", boxes, "--out", out]
    assert cli(*argv, "--viz", photos) == 2
    assert "would write the overlay" in error_line(capsys)
    assert cli(*argv[:-1], photos / "a.png") == 2
    assert "is the --images file" in error_line(capsys)
    assert digest(tmp_path) == before


def test_export_eval_and_score_refuse_to_write_over_their_inputs(tmp_path, checkpoint, capsys):
    """Second hostile round: export --onnx and eval --out replaced the checkpoint, score --out
    the ground truth."""
    ckpt = tmp_path / "last.pt"
    ckpt.write_bytes(checkpoint.read_bytes())
    gt = tmp_path / "gt.json"
    gt.write_text((demo_data_root() / "annotations" / "instances_val2017.json").read_text())
    before = digest(tmp_path)
    assert cli("export", ckpt, "--onnx", ckpt) == 2
    assert "is the checkpoint; expected a new file" in error_line(capsys)
    assert cli("eval", ckpt, "--out", ckpt) == 2
    assert "is the checkpoint; expected a new file" in error_line(capsys)
    assert cli("score", gt, "--gt", gt, "--out", gt) == 2
    assert "is the results file; expected a new file" in error_line(capsys)
    assert digest(tmp_path) == before


def test_eval_says_when_the_checkpoints_eval_root_is_not_here(tmp_path, capsys):
    """A checkpoint made elsewhere (a bundled model) names an evaluation root of that machine."""
    ckpt = write_checkpoint(tmp_path / "m.pt", tiny_config(f"data.val_root={tmp_path / 'gone'}"))
    assert cli("eval", ckpt) == 1
    line = error_line(capsys)
    assert "which is not on this machine; expected --data-root DIR" in line and "gone" in line
