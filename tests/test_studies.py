"""The study runner (``deepmac study TABLE``) on a 2-step, 1-seed toy study of the embedded
sample: records, Markdown and plot written; a study started again reuses finished runs and
resumes unfinished ones."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import TINY_BOX_PROMPTED_OVERRIDES

from deepmac.backbones import IMAGENET_WEIGHTS
from deepmac.config.presets import PRESETS
from deepmac.data import demo_data_root
from deepmac.engine.checkpoint import load_checkpoint
from deepmac.experiments import training as experiment
from deepmac.studies import STUDIES, Row, Study, StudyData, run_study
from deepmac.studies.runner import RECORDED, run_config

pytestmark = pytest.mark.usefixtures("two_threads")

TOY = Study(
    "toy",
    "Toy: two heads",
    (
        Row("ResNet-4", ("model.mask_head=resnet4",), preset="box_prompted_demo"),
        Row("ResNet-8", ("model.mask_head=resnet8",), preset="box_prompted_demo"),
    ),
)


def demo_data() -> StudyData:
    root = str(demo_data_root())
    return StudyData(train=[f"{root}@train2017"], val=root)


def test_toy_study_writes_records_markdown_and_plot_and_resumes(tmp_path, monkeypatch):
    overrides = [o for o in TINY_BOX_PROMPTED_OVERRIDES if not o.startswith("model.mask_head")]
    records = run_study(
        TOY, seeds=[0], out=tmp_path, data=demo_data(), steps=2, overrides=overrides,
        progress=False,
    )  # fmt: skip
    assert [r["row"] for r in records] == ["ResNet-4", "ResNet-8"]
    for record in records:
        assert record["table"] == "toy" and record["seed"] == 0 and record["steps"] == 2
        assert record["commit"] and record["wall_seconds"] > 0 and not record["resumed"]
        assert record["device"] == "cpu" and record["amp"] == "none"
        assert all(0.0 <= record[key] <= 1.0 for key in RECORDED)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["records"] == records and set(saved["filled_box"]) == {"all", "voc", "nonvoc"}
    table = (tmp_path / "results.md").read_text()
    assert "| filled box |" in table and "| ResNet-4 |" in table and "| ResNet-8 |" in table
    pytest.importorskip("matplotlib")
    assert (tmp_path / "toy.png").stat().st_size > 1000

    # Started again: the scored run is reused without training; the one whose record is
    # gone (interrupted after its checkpoint) resumes from last.pt at its final step.
    (tmp_path / "resnet_8_s0" / "record.json").unlink()
    trained = []
    real = experiment.run_training

    def spy(cfg, *args, **kwargs):
        trained.append(cfg.name)
        return real(cfg, *args, **kwargs)

    monkeypatch.setattr(experiment, "run_training", spy)
    again = run_study(
        TOY, seeds=[0], out=tmp_path, data=demo_data(), steps=2, overrides=overrides,
        progress=False,
    )  # fmt: skip
    assert trained == ["resnet_8"]
    assert again[0] == records[0]
    assert again[1]["resumed"] and again[1]["steps"] == 2
    # --report-only: the report is rewritten from the records, nothing trains.
    (tmp_path / "results.md").unlink()
    (tmp_path / "resnet_8_s0" / "record.json").unlink()
    reported = run_study(
        TOY, seeds=[0], out=tmp_path, data=demo_data(), steps=2, overrides=overrides,
        report_only=True,
    )  # fmt: skip
    assert trained == ["resnet_8"] and reported == again[:1]
    assert "| ResNet-4 |" in (tmp_path / "results.md").read_text()
    with pytest.raises(ValueError, match=r"--report-only: expected scored runs of toy's rows"):
        run_study(TOY, seeds=[0], out=tmp_path / "empty", data=demo_data(), steps=2,
                  overrides=overrides, report_only=True)  # fmt: skip
    # Other steps (or overrides) would mix two schedules in one row: refused, nothing run.
    with pytest.raises(ValueError, match=r"trained with another config \(train.steps differ"):
        run_study(TOY, seeds=[0], out=tmp_path, data=demo_data(), steps=3, overrides=overrides)
    # A key that acts after the last step only: the same training, finished again and rescored.
    finished = run_study(
        TOY, seeds=[0], out=tmp_path, data=demo_data(), steps=2,
        overrides=[*overrides, "train.precise_bn_batches=2"], progress=False,
    )  # fmt: skip
    assert trained == ["resnet_8", "resnet_4", "resnet_8"]
    assert [r["steps"] for r in finished] == [2, 2]
    assert finished[0]["wall_seconds"] > records[0]["wall_seconds"]
    assert finished[0]["trained_commit"] == records[0]["commit"]
    assert load_checkpoint(tmp_path / "resnet_4_s0" / "last.pt")["precise_bn"] == {"batches": 2}


def test_rows_parallel_jobs_and_reuse(tmp_path, monkeypatch):
    """``rows`` picks rows by label or slug; ``jobs=2`` trains two runs at once in spawned
    processes; results.json reports every record under the folder, not only this call's; a
    run of the same config in a ``reuse`` folder is not trained again."""
    overrides = [o for o in TINY_BOX_PROMPTED_OVERRIDES if not o.startswith("model.mask_head")]
    first = run_study(
        TOY, seeds=[0], out=tmp_path, data=demo_data(), steps=1, overrides=overrides,
        progress=False, rows=["ResNet-4"],
    )  # fmt: skip
    assert [(r["row"], r["seed"]) for r in first] == [("ResNet-4", 0)]
    both = run_study(
        TOY, seeds=[1, 2], out=tmp_path, data=demo_data(), steps=1, overrides=overrides,
        rows=["resnet_8"], jobs=2,
    )  # fmt: skip
    assert [(r["row"], r["seed"]) for r in both] == [("ResNet-8", 1), ("ResNet-8", 2)]
    assert all(r["steps"] == 1 and not r["resumed"] for r in both)
    saved = json.loads((tmp_path / "results.json").read_text())["records"]
    assert [(r["row"], r["seed"]) for r in saved] == [
        ("ResNet-4", 0), ("ResNet-8", 1), ("ResNet-8", 2)
    ]  # fmt: skip
    assert "| ResNet-8 | " in (tmp_path / "results.md").read_text()
    with pytest.raises(ValueError, match=r"toy has no row 'HG-20'; expected one of resnet_4"):
        run_study(TOY, seeds=[0], out=tmp_path, data=demo_data(), rows=["HG-20"])

    # Another --steps in the same folder: the report keeps only the runs of this call's config.
    run_study(
        TOY, seeds=[3], out=tmp_path, data=demo_data(), steps=2, overrides=overrides,
        progress=False, rows=["resnet_4"],
    )  # fmt: skip
    saved = json.loads((tmp_path / "results.json").read_text())["records"]
    assert [(r["row"], r["seed"], r["steps"]) for r in saved] == [("ResNet-4", 3, 2)]

    # Another study with a row of the same config (another label) reuses the run, untrained.
    monkeypatch.setattr(experiment, "run_training", lambda *a, **k: pytest.fail("trained"))
    other = Study("other", "Other", (Row("R8", ("model.mask_head=resnet8",), "box_prompted_demo"),))
    (reused,) = run_study(
        other, seeds=[2], out=tmp_path / "other", data=demo_data(), steps=1,
        overrides=overrides, progress=False, reuse=[tmp_path],
    )  # fmt: skip
    assert reused["row"] == "R8" and reused["table"] == "other" and reused["device"] == "cpu"
    assert reused["overrides"] == ["model.mask_head=resnet8", *overrides]
    assert reused["reused_from"] == str(tmp_path / "resnet_8_s2")
    assert reused["mask_iou/all/mIoU"] == both[1]["mask_iou/all/mIoU"]
    assert (tmp_path / "other" / "r8_s2" / "config.json").is_file()


def test_records_of_another_machine_count_as_done(tmp_path, monkeypatch):
    """``records``: a committed results.json restores its runs of this call's steps and
    overrides (config and record written), so a study continued on a fresh machine trains
    only what they lack; records of other steps are left out; a bad file is refused."""
    overrides = [o for o in TINY_BOX_PROMPTED_OVERRIDES if not o.startswith("model.mask_head")]
    metrics = {key: 0.5 for key in RECORDED}

    def record(row: Row, seed: int, steps: int) -> dict:
        return {"table": "toy", "row": row.name, "seed": seed, "steps": steps,
                "overrides": [*row.overrides, *overrides], "commit": "abc", "wall_seconds": 9.0,
                **metrics}  # fmt: skip

    resnet4, resnet8 = TOY.rows
    earlier = tmp_path / "committed.json"
    earlier.write_text(json.dumps({"study": "toy", "records": [
        record(resnet4, 0, 2), record(resnet8, 0, 2), record(resnet8, 1, 3)]}))  # fmt: skip
    monkeypatch.setattr(experiment, "run_training", lambda *a, **k: pytest.fail("trained"))
    out = tmp_path / "study"
    found = run_study(
        TOY, seeds=[0], out=out, data=demo_data(), steps=2, overrides=overrides,
        progress=False, restore_from=[earlier],
    )  # fmt: skip
    assert [(r["row"], r["seed"], r["restored_from"]) for r in found] == [
        ("ResNet-4", 0, str(earlier)), ("ResNet-8", 0, str(earlier))]  # fmt: skip
    assert not (out / "resnet_8_s1").exists()  # 3 steps: another config
    saved = json.loads((out / "resnet_4_s0" / "config.json").read_text())
    assert saved["train"]["steps"] == 2 and saved["model"]["mask_head"] == "resnet4"
    assert len(json.loads((out / "results.json").read_text())["records"]) == 2
    with pytest.raises(ValueError, match=r"--records .*expected a study's results.json"):
        run_study(TOY, seeds=[0], out=out, data=demo_data(), steps=2, overrides=overrides,
                  restore_from=[out / "nope"])  # fmt: skip


def test_every_study_row_builds_a_valid_config(tmp_path):
    data = StudyData(train=["a@train2017"], val="b")
    for study in STUDIES.values():
        assert len({row.slug for row in study.rows}) == len(study.rows), study.name
        for row in study.rows:
            assert row.preset in PRESETS
            cfg = run_config(row, 1, 5, data, [])
            assert cfg.train.seed == 1 and cfg.train.steps == 5 and cfg.data.val_root == "b"
            # ImageNet weights exactly where the row's backbone has them (table7_gpu's
            # hourglass backbones start from scratch).
            pretrained = cfg.model.backbone in IMAGENET_WEIGHTS
            assert cfg.model.backbone_init == ("imagenet" if pretrained else None), row.name
            assert set(row.paper) <= {"all", "voc", "nonvoc"}
        labels = {row.name for row in study.rows}
        assert all({a, b} <= labels for a, b in study.comparisons), study.name


def test_study_help_lists_the_tables():
    done = subprocess.run(
        [sys.executable, "-m", "deepmac", "study", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0
    for name in ("table4", "table5", "table6", "table7", "table7_gpu", "table1_2", "appendix_c",
                 "scaling"):  # fmt: skip
        assert name in done.stdout


def test_margins_in_pooled_seed_std():
    """The margins table: difference of means per split and its size in pooled seed std."""
    from deepmac.studies.report import margin, study_markdown

    def record(row, seed, voc, nonvoc):
        values = {"all": (voc + nonvoc) / 2, "voc": voc, "nonvoc": nonvoc}
        return {"row": row, "seed": seed, "steps": 2, "commit": "abc", "wall_seconds": 60.0,
                **{f"mask_iou/{s}/{m}": v for s, v in values.items()
                   for m in ("mIoU", "mIoU_class")},
                **{f"segm/{s}/AP": 0.1 for s in values}}  # fmt: skip

    study = Study("pair", "Pair", (Row("A"), Row("B")), comparisons=(("B", "A"),))  # VOC masks
    records = [record("A", 0, 0.60, 0.50), record("A", 1, 0.62, 0.52)]
    records += [record("B", 0, 0.61, 0.56), record("B", 1, 0.63, 0.60)]
    diff, sds = margin(records, "B", "A", "mask_iou/nonvoc/mIoU")
    # A: 0.51 +- 0.01414, B: 0.58 +- 0.02828; pooled sqrt((0.0002 + 0.0008) / 2) = 0.02236
    assert diff == pytest.approx(0.07) and sds == pytest.approx(0.07 / 0.0223607, rel=1e-4)
    assert margin(records[:1] + records[2:], "B", "A", "mask_iou/voc/mIoU")[1] is None
    table = study_markdown(study, records, {"all": 0.5, "voc": 0.5, "nonvoc": 0.5})
    assert "| B - A | +0.040 (+2.2 sd) | +0.010 (+0.7 sd) | +0.070 (+3.1 sd) | +0.060 |" in table
    # Masks of the non-VOC classes: the unseen split is VOC, the sign turns.
    flat = {"all": 0.5, "voc": 0.5, "nonvoc": 0.5}
    reverse = Study("rev", "Rev", tuple(Row(n, ("data.mask_split=nonvoc",)) for n in "AB"),
                    comparisons=(("B", "A"),))  # fmt: skip
    assert "| +0.070 (+3.1 sd) | -0.060 |" in study_markdown(reverse, records, flat)
    # Masks of one class: neither split is unseen as a whole.
    person = Study("one", "One", tuple(Row(n, ("data.mask_split=1",)) for n in "AB"),
                   comparisons=(("B", "A"),))  # fmt: skip
    assert "| +0.070 (+3.1 sd) | - |" in study_markdown(person, records, flat)
