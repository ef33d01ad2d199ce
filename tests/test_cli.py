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
    for command in ("demo", "heads", "score"):
        assert command in out


@pytest.mark.parametrize("command", ["demo", "heads", "score"])
def test_each_command_has_help(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "usage: deepmac " + command in capsys.readouterr().out


def test_python_dash_m_entry_point():
    done = subprocess.run([sys.executable, "-m", "deepmac", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "demo" in done.stdout


def test_unknown_command_is_rejected(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["trian"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_demo_writes_metrics_results_and_overlays(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    # Filled boxes with the GT boxes: box AP is exactly 1, mask quality is that of a box.
    assert metrics["bbox/all/AP"] == pytest.approx(1.0)
    assert 0.4 < metrics["mask_iou/nonvoc/mIoU"] < 0.8
    assert metrics["mask_iou/all/num_instances"] == 64
    assert len(list((tmp_path / "overlays").glob("*.png"))) == 8
    # The results file scores to the same mask AP through the score command.
    ann = demo_data_root() / "annotations" / "instances_val2017.json"
    out = tmp_path / "scored.json"
    assert main(["score", str(tmp_path / "results.json"), "--gt", str(ann), "--out", str(out)]) == 0
    scored = json.loads(out.read_text())
    assert scored["segm/nonvoc/AP"] == pytest.approx(metrics["segm/nonvoc/AP"])


def test_score_reports_bad_files_without_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    ann = demo_data_root() / "annotations" / "instances_val2017.json"
    assert main(["score", str(bad), "--gt", str(ann)]) == 1
    err = capsys.readouterr().err
    assert "deepmac score: error:" in err and "bad.json" in err
