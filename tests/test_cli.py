"""The command line: help texts, the demo, scoring a results file, errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from deepmac.cli.main import build_parser, main
from deepmac.data import demo_data_root


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "train", "eval", "predict", "heads", "score"):
        assert command in out


@pytest.mark.parametrize("command", ["demo", "train", "eval", "predict", "heads", "score"])
def test_each_command_has_help(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "usage: deepmac " + command in capsys.readouterr().out


def test_python_dash_m_entry_point():
    command = [sys.executable, "-m", "deepmac", "--help"]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0 and "demo" in done.stdout


def test_unknown_command_is_rejected(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["trian"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_demo_scores_the_bundled_model_then_fine_tunes_it(tmp_path, capsys):
    # Two fine-tuning steps: the whole path runs; quality is the full demo's business.
    assert main(["demo", "--out", str(tmp_path), "--steps", "2", "--no-progress"]) == 0
    assert (tmp_path / "last.pt").is_file()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    # GT boxes as detections: box AP is exactly 1 whatever the masks.
    assert metrics["bbox/all/AP"] == pytest.approx(1.0)
    assert metrics["mask_iou/all/num_instances"] == 64
    assert metrics["bundled/mask_iou/all/num_instances"] == 64
    assert metrics["bundled_model"] == "box-prompted-voc" and metrics["train_steps"] == 2
    # The baseline printed beside the model: filled boxes score like boxes.
    assert 0.4 < metrics["filled_box/mask_iou/nonvoc/mIoU"] < 0.8
    # One overlay per held-out image holding a non-VOC instance (7 of the 8), per model.
    for model in ("bundled", "fine_tuned"):
        assert len(list((tmp_path / "overlays" / model).glob("*.png"))) == 7
    out = capsys.readouterr().out
    assert "filled box" in out and "fine-tuned" in out and "The bundled model" in out
    # The results file scores to the same mask AP through the score command.
    ann = demo_data_root() / "annotations" / "instances_val2017.json"
    scored_path = tmp_path / "scored.json"
    results = str(tmp_path / "results.json")
    assert main(["score", results, "--gt", str(ann), "--out", str(scored_path)]) == 0
    scored = json.loads(scored_path.read_text())
    assert scored["segm/nonvoc/AP"] == pytest.approx(metrics["segm/nonvoc/AP"])


def test_score_reports_bad_files_without_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    ann = demo_data_root() / "annotations" / "instances_val2017.json"
    assert main(["score", str(bad), "--gt", str(ann)]) == 1
    err = capsys.readouterr().err
    assert "deepmac score: error:" in err and "bad.json" in err
