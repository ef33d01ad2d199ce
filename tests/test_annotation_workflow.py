"""From photos and boxes to masks an annotation tool imports (issue 19): box files (CSV, results
JSON named by file, instances JSON), COCO instances output with RLE or polygons that
round-trips through pycocotools, the Python API, progress lines in logs, configs, overlays."""

from __future__ import annotations

import csv
import inspect
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_BOX_PROMPTED_OVERRIDES
from PIL import Image
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from deepmac.cli.main import build_parser, main
from deepmac.config import ExperimentConfig, apply_overrides
from deepmac.config.presets import get_preset
from deepmac.data import demo_data_root
from deepmac.data.images import open_image
from deepmac.engine import save_checkpoint
from deepmac.models.families import build_model
from deepmac.structures.polygons import mask_to_polygons

TINY = TINY_BOX_PROMPTED_OVERRIDES
VAL_JSON = demo_data_root() / "annotations" / "instances_val2017.json"


#: Every test here runs on two threads (the machine kind), whatever the session set.
pytestmark = pytest.mark.usefixtures("two_threads")


def tiny_config() -> ExperimentConfig:
    return apply_overrides(get_preset("box_prompted_demo"), list(TINY))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny box-prompted model: its masks are smooth blobs (a 16 x 16 head output
    pasted bilinearly), which is all the file formats need."""
    cfg = tiny_config()
    torch.manual_seed(0)
    model = build_model(cfg.model)
    path = tmp_path_factory.mktemp("ckpt") / "last.pt"
    save_checkpoint(
        path,
        model=model,
        optimizer=None,
        scheduler=None,
        step=0,
        config=cfg.to_dict(),
        model_type=model.model_type,
    )
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, Path, dict[str, list[list[float]]]]:
    """Three demo images renamed as a camera names them, and a CSV of their ground-truth
    boxes as xyxy: ``(folder, csv file, name -> boxes)``."""
    root = tmp_path_factory.mktemp("photos")
    folder = root / "shoot"
    folder.mkdir()
    data = json.loads(VAL_JSON.read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    boxes: dict[str, list[list[float]]] = {}
    rows = []
    for k, image in enumerate(data["images"][:3]):
        name = f"IMG_{4711 + k}.jpg"
        shutil.copy(demo_data_root() / "val2017" / image["file_name"], folder / name)
        for a in data["annotations"]:
            if a["image_id"] == image["id"] and not a["iscrowd"]:
                x, y, w, h = a["bbox"]
                boxes.setdefault(name, []).append([x, y, x + w, y + h])
                rows.append([name, x, y, x + w, y + h, names[a["category_id"]]])
    table = root / "boxes.csv"
    with table.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "x1", "y1", "x2", "y2", "label"])
        writer.writerows(rows)
    return folder, table, boxes


def cli(*argv: object) -> int:
    return main([str(a) for a in argv])


def decoded(coco: COCO, annotation: dict) -> np.ndarray:
    return coco.annToMask(annotation).astype(bool)


# ----------------------------------------------------------------------------- outputs


def test_photos_and_a_csv_give_an_instances_json_that_round_trips(
    tmp_path, checkpoint, photos, capsys
):
    """Done when 1: non-numeric JPEG names + a CSV of xyxy boxes -> in one command a COCO
    instances JSON pycocotools loads, whose RLE masks are the predicted masks; overlays."""
    folder, table, boxes = photos
    out, viz = tmp_path / "instances.json", tmp_path / "viz"
    argv = ["predict", checkpoint, "--images", folder, "--boxes", table]
    assert cli(*argv, "--format", "instances", "--out", out, "--viz", viz) == 0
    assert "(instances, rle)" in capsys.readouterr().out
    coco = COCO(str(out))
    files = {im["file_name"]: im for im in coco.dataset["images"]}
    assert sorted(files) == sorted(boxes)
    with table.open(newline="") as f:
        labels = {row["label"] for row in csv.DictReader(f)}
    assert {c["name"] for c in coco.dataset["categories"]} == labels
    from deepmac import BoxPromptedSegmenter

    segmenter = BoxPromptedSegmenter.from_checkpoint(checkpoint)
    compared = 0
    for name, image_info in files.items():
        image = open_image(folder / name)
        assert (image_info["height"], image_info["width"]) == (image.height, image.width)
        masks, _ = segmenter.predict(image, boxes[name])
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_info["id"]]))
        nonempty = [m for m in masks if m.any()]
        assert len(anns) == len(nonempty)
        for ann, mask in zip(anns, nonempty, strict=True):
            assert ann["iscrowd"] == 0 and ann["area"] == mask.sum() and ann["id"] >= 1
            assert np.array_equal(decoded(coco, ann), mask)
            compared += 1
        assert (viz / f"{Path(name).stem}.png").is_file()
    assert compared > 5
    assert len({a["id"] for a in coco.dataset["annotations"]}) == compared


def test_polygons_match_the_rle_masks(tmp_path, checkpoint, photos):
    """Done when 2: --format instances --segmentation polygon, polygons against the RLE masks
    of the same run: IoU >= 0.95 for every instance."""
    folder, table, _ = photos
    argv = ["predict", checkpoint, "--images", folder, "--boxes", table, "--format", "instances"]
    assert cli(*argv, "--out", tmp_path / "rle.json") == 0
    assert cli(*argv, "--segmentation", "polygon", "--out", tmp_path / "poly.json") == 0
    rle, poly = COCO(str(tmp_path / "rle.json")), COCO(str(tmp_path / "poly.json"))
    assert len(rle.dataset["annotations"]) == len(poly.dataset["annotations"]) > 5
    for a, b in zip(rle.dataset["annotations"], poly.dataset["annotations"], strict=True):
        assert isinstance(b["segmentation"], list) and all(len(p) >= 6 for p in b["segmentation"])
        exact, traced = decoded(rle, a), decoded(poly, b)
        iou = (exact & traced).sum() / (exact | traced).sum()
        assert iou >= 0.95, (b["id"], iou)
    # Polygons need an instances file: a results file holds RLE masks.
    assert cli(*argv[:-2], "--segmentation", "polygon", "--out", tmp_path / "r.json") == 2


def test_mask_to_polygons_is_exact_without_tolerance():
    rng = np.random.default_rng(0)
    mask = rng.random((30, 40)) < 0.35  # many regions, diagonal contacts
    mask[5:25, 10:30] = True
    mask[12:16, 18:22] = False  # a hole: COCO polygons fill it
    filled = mask.copy()
    filled[12:16, 18:22] = True
    polygons = mask_to_polygons(mask, tolerance=0)
    rles = mask_util.frPyObjects(polygons, 30, 40)
    traced = mask_util.decode(mask_util.merge(rles)).astype(bool)
    assert np.array_equal(traced, filled)
    assert mask_to_polygons(np.zeros((4, 4), bool)) == []
    with pytest.raises(ValueError, match=r"mask must be \(H, W\), got shape \(2, 4, 4\)"):
        mask_to_polygons(np.zeros((2, 4, 4), bool))


def test_instances_boxes_keep_ids_crowd_and_show_ground_truth(tmp_path, checkpoint):
    """An instances JSON as --boxes: its image ids are kept, its crowd annotations too; the
    overlays put ground truth beside the prediction (two panels)."""
    data = json.loads(VAL_JSON.read_text())
    first = data["images"][0]
    crowd = {
        "id": 9999,
        "image_id": first["id"],
        "category_id": data["categories"][0]["id"],
        "iscrowd": 1,
        "bbox": [0, 0, 10, 10],
        "area": 100,
        "segmentation": {
            "size": [first["height"], first["width"]],
            "counts": [0, 100, first["height"] * first["width"] - 100],
        },
    }
    data["annotations"].append(crowd)
    boxes = tmp_path / "gt.json"
    boxes.write_text(json.dumps(data))
    image = demo_data_root() / "val2017" / first["file_name"]
    out, viz = tmp_path / "masks.json", tmp_path / "viz"
    argv = ["predict", checkpoint, "--images", image, "--boxes", boxes, "--format", "instances"]
    assert cli(*argv, "--out", out, "--viz", viz) == 0
    written = json.loads(out.read_text())
    assert [im["id"] for im in written["images"]] == [first["id"]]
    assert [a for a in written["annotations"] if a["iscrowd"]][0]["segmentation"] == crowd[
        "segmentation"
    ]
    assert len(written["categories"]) == len(data["categories"])
    overlay = Image.open(viz / f"{Path(first['file_name']).stem}.png")
    assert overlay.size == (2 * first["width"], first["height"])


def test_results_boxes_named_by_file_and_a_subset_of_images(tmp_path, checkpoint, photos, caplog):
    """A detector's results file may name images by file and cover images not given: those
    are skipped with a count; boxes keep their own score."""
    folder, _, boxes = photos
    name = sorted(boxes)[0]
    x1, y1, x2, y2 = boxes[name][0]
    entries = [
        {"image_id": name, "bbox": [x1, y1, x2 - x1, y2 - y1], "category_id": 1, "score": 0.7},
        {"image_id": "elsewhere.jpg", "bbox": [1, 1, 5, 5], "category_id": 1, "score": 0.9},
    ]
    results = tmp_path / "dets.json"
    results.write_text(json.dumps(entries))
    out = tmp_path / "masks.json"
    with caplog.at_level(logging.INFO, logger="deepmac"):
        assert cli("predict", checkpoint, "--images", folder, "--boxes", results, "--out", out) == 0
    assert any("1 image(s) of the file are not among" in r.getMessage() for r in caplog.records)
    (result,) = json.loads(out.read_text())
    assert result["score"] == pytest.approx(0.7) and result["bbox"] == pytest.approx(
        entries[0]["bbox"]
    )


def test_csv_box_formats_and_errors(tmp_path, checkpoint, photos, capsys):
    folder, _, boxes = photos
    name = sorted(boxes)[0]
    x1, y1, x2, y2 = boxes[name][0]
    xywh = tmp_path / "xywh.csv"
    xywh.write_text(f"image,x,y,w,h\n{name},{x1},{y1},{x2 - x1},{y2 - y1}\n")
    xyxy = tmp_path / "xyxy.csv"
    xyxy.write_text(f"image,x1,y1,x2,y2,score\n{name},{x1},{y1},{x2},{y2},\n")
    outs = []
    for table, extra in ((xywh, ["--box-format", "xywh"]), (xyxy, [])):
        outs.append(tmp_path / f"{table.stem}.json")
        assert (
            cli(
                "predict",
                checkpoint,
                "--images",
                folder,
                "--boxes",
                table,
                *extra,
                "--out",
                outs[-1],
            )
            == 0
        )
    (a,), (b,) = (json.loads(p.read_text()) for p in outs)
    assert a["segmentation"] == b["segmentation"] and a["bbox"] == pytest.approx(b["bbox"])
    # The xywh header read as xyxy: the message says which format the columns fit.
    assert cli("predict", checkpoint, "--images", folder, "--boxes", xywh, "--out", outs[0]) == 1
    err = capsys.readouterr().err
    assert "xywh.csv line 1: expected a header image,x1,y1,x2,y2[,label][,score]" in err
    assert "pass --box-format xywh" in err
    xyxy.write_text(f"image,x1,y1,x2,y2\n{name},1,2,three,4\n")
    assert cli("predict", checkpoint, "--images", folder, "--boxes", xyxy, "--out", outs[0]) == 1
    assert (
        "xyxy.csv line 2 column 'x2': expected a finite number, found 'three'"
        in capsys.readouterr().err
    )


def test_images_from_a_list_and_subfolders(tmp_path, checkpoint, photos):
    folder, table, boxes = photos
    nested = tmp_path / "root"
    shutil.copytree(folder, nested / "day1")
    listing = tmp_path / "images.txt"
    listing.write_text("# two photos\n" + "\n".join(f"root/day1/{n}" for n in sorted(boxes)[:2]))
    out = tmp_path / "a.json"
    assert cli("predict", checkpoint, "--images", listing, "--boxes", table, "--out", out) == 0
    assert len({r["image_id"] for r in json.loads(out.read_text())}) == 2
    out = tmp_path / "b.json"
    argv = ["predict", checkpoint, "--images", nested, "--recursive", "--boxes", table]
    assert cli(*argv, "--format", "instances", "--out", out) == 0
    names = [im["file_name"] for im in json.loads(out.read_text())["images"]]
    assert names == [f"day1/{n}" for n in sorted(boxes)]


# ----------------------------------------------------------------------------- Python API


def test_python_api_takes_sam_like_boxes_and_returns_numpy(checkpoint):
    from deepmac import BoxPromptedSegmenter, load_model
    from deepmac.cli.main import build_parser as parser

    seg = BoxPromptedSegmenter.from_checkpoint(checkpoint)
    image = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    box = [5.0, 4.0, 40.0, 45.0]
    masks, scores = seg.predict(image, box)  # (4,)
    assert isinstance(masks, np.ndarray) and masks.shape == (1, 50, 70) and masks.dtype == bool
    assert isinstance(scores, np.ndarray) and scores.shape == (1,) and scores.dtype == np.float32
    two, two_scores = seg.predict(None, np.array([box, [0, 0, 70, 50]]))
    assert two.shape == (2, 50, 70) and np.array_equal(two[0], masks[0])
    as_xywh, _ = seg.predict(None, [[5.0, 4.0, 35.0, 41.0]], box_format="xywh")
    assert np.array_equal(as_xywh, masks)
    none, no_scores = seg.predict(None, [])
    assert none.shape == (0, 50, 70) and no_scores.shape == (0,)
    tensors, tensor_scores = seg.predict(None, torch.tensor([box]), return_numpy=False)
    assert isinstance(tensors, torch.Tensor) and torch.equal(tensors, torch.from_numpy(masks))
    # The score is the mean probability over the mask's pixels.
    from deepmac.structures.masks import paste_masks_in_image

    soft = paste_masks_in_image(seg.predict_probs([box]), torch.tensor([box]), (50, 70), None)
    expected = soft[0][tensors[0]].mean() if tensors[0].any() else torch.tensor(0.0)
    assert float(tensor_scores[0]) == pytest.approx(float(expected), abs=1e-5)
    assert 0.0 <= float(two_scores.min()) and float(two_scores.max()) <= 1.0
    loose, _ = seg.predict(None, box, mask_threshold=0.05)
    assert loose.sum() >= masks.sum()
    with pytest.raises(
        ValueError, match=r"boxes must be \(N, 4\) or \(4,\) xyxy, got shape \(3,\)"
    ):
        seg.predict(None, [1.0, 2.0, 3.0])
    cli_default = parser().parse_args(["predict", "c.pt", "--images", "x", "--out", "o"])
    default = inspect.signature(load_model).parameters["score_threshold"].default
    assert default == cli_default.score_threshold == 0.3


# ----------------------------------------------------------------------------- CLI


def test_train_logs_periodic_loss_lines_when_stderr_is_a_file(tmp_path):
    """Done when 3: train with stderr redirected to a file logs step, loss, img/s and ETA."""
    log = tmp_path / "train.log"
    command = [sys.executable, "-m", "deepmac", "train", "box_prompted_demo", "--out"]
    command += [str(tmp_path / "run"), "--steps", "3", *TINY]
    with log.open("w") as f:
        done = subprocess.run(command, stderr=f, stdout=subprocess.PIPE, text=True, timeout=600)
    text = log.read_text()
    assert done.returncode == 0, text
    lines = [line for line in text.splitlines() if " loss " in line and "img/s ETA" in line]
    assert [line.split("step ")[1].split()[0] for line in lines] == ["1/3", "2/3", "3/3"]
    assert "\r" not in text


def test_print_config_and_config_file(tmp_path, capsys):
    assert cli("train", "box_prompted_demo", "--print-config", "train.steps=7") == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["train"]["steps"] == 7
    path = tmp_path / "my.json"
    path.write_text(json.dumps(printed))
    assert cli("train", "--config", path, "--print-config") == 0
    assert json.loads(capsys.readouterr().out) == printed
    assert cli("train", "box_prompted_demo", "--config", path) == 2


def test_version_and_verbose_after_the_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("deepmac ")
    args = build_parser().parse_args(["heads", "-v"])
    assert args.verbose is True


def test_eval_table_shows_the_filled_box_baseline_not_box_ap(checkpoint, capsys):
    argv = ["eval", checkpoint, "--max-images", "2", "--no-progress"]
    assert cli(*argv) == 0
    out = capsys.readouterr().out
    assert "filled box/all" in out and "model/all" in out and "segm/all" in out
    assert "bbox/" not in out


# ----------------------------------------------------------------------------- training curves


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A 4-step tiny run evaluated at steps 2 and 4, with TensorBoard events when installed."""
    run = tmp_path_factory.mktemp("run")
    board = ["train.tensorboard=true"] if _has_tensorboard() else []
    argv = ["train", "box_prompted_demo", "--out", run, "--steps", "4", "--no-progress", *TINY]
    argv += ["train.eval_every=2", "eval.max_images=2", *board]
    assert cli(*argv) == 0
    return run


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def test_plot_draws_losses_lr_and_eval_curves(tiny_run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "curves.png"
    assert cli("plot", tiny_run, "--out", out) == 0
    with Image.open(out) as image:
        # Three panels (losses, lr, evaluation) side by side: 15 x 3.6 inches (two: 10 x 3.6).
        assert image.format == "PNG" and image.width > 3.5 * image.height
    assert cli("plot", tiny_run) == 0 and (tiny_run / "curves.png").is_file()
    capsys.readouterr()
    assert cli("plot", tmp_path) == 1
    assert "has no metrics.jsonl" in capsys.readouterr().err


def test_tensorboard_events_hold_the_logged_losses(tiny_run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tiny_run / "tensorboard"))
    events.Reload()
    logged = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in logged if r["type"] == "train"]
    scalars = events.Scalars("train/loss")
    assert [s.step for s in scalars] == [r["step"] for r in train]
    assert [s.value for s in scalars] == pytest.approx([r["loss"] for r in train], rel=1e-6)
    assert "eval/mask_iou/all/mIoU" in events.Tags()["scalars"]
