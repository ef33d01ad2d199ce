"""The paper's tables as studies: rows of config overrides on one preset, trained and scored
alike (``deepmac study TABLE``).

Every run is scored from ground-truth boxes on one evaluation split (mIoU all / VOC / non-VOC),
the box-prompted rows as the paper's Table 4 and the Deep-MARC rows of ``table1_2`` too, since
their detection AP is about 0 at CPU scale; the rows of a study differ only in what their
overrides say. ``paper`` holds the figures the paper reports for
the row (mIoU for Tables 4 and 7, mask mAP for Tables 1, 2, 5 and 6: another metric, quoted
for the ordering, not for the values).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

SPLITS = ("all", "voc", "nonvoc")


@dataclass(frozen=True)
class Row:
    """One row: its label, the preset it starts from and the overrides that make it."""

    name: str
    overrides: tuple[str, ...] = ()
    preset: str = "box_prompted_cpu"
    #: the paper's figures for the row, per split (percent), when it reports them.
    paper: dict[str, float] = field(default_factory=dict)

    @property
    def slug(self) -> str:
        """The row's run folder name: lower case, no spaces or punctuation."""
        return "".join(c if c.isalnum() else "_" for c in self.name.lower()).strip("_")


@dataclass(frozen=True)
class Study:
    name: str
    title: str
    rows: tuple[Row, ...]
    #: what the paper's figures of ``Row.paper`` are.
    paper_metric: str = "mIoU"
    #: ``(row, reference row)`` label pairs whose margins the report gives per split, in
    #: seed standard deviations: the comparisons the paper's table is about.
    comparisons: tuple[tuple[str, str], ...] = ()


def _paper(overall: float, voc: float, nonvoc: float) -> dict[str, float]:
    return {"all": overall, "voc": voc, "nonvoc": nonvoc}


def _head(head: str) -> str:
    return f"model.mask_head={head}"


_ALL_MASKS = "data.mask_split=all"
#: Deep-MARC heads as the official configs size them (RoIAlign crop side, head width); the
#: hourglass crop is 16 instead of 32 at CPU scale, as deepmarc_cpu's.
_DEEPMARC_DEFAULT = (_head("deepmarc_default"), "model.mask_size=14", "model.num_init_channels=256")
_DEEPMARC_HG52 = (_head("deepmarc_hourglass52"), "model.mask_size=16", "model.num_init_channels=64")

STUDIES: dict[str, Study] = {
    s.name: s
    for s in (
        Study(
            "table4",
            "Table 4: mask heads of the box-prompted model, VOC masks only (plus the all-masks "
            "upper bound)",
            (
                Row("ResNet-4", (_head("resnet4"),), paper=_paper(67.0, 78.6, 62.1)),
                Row("Hourglass-20", (_head("hourglass20"),), paper=_paper(78.6, 81.0, 77.8)),
                Row("Hourglass-52", (_head("hourglass52"),), paper=_paper(78.9, 81.1, 79.2)),
                Row("Hourglass-20, all masks", (_head("hourglass20"), _ALL_MASKS)),
            ),
            comparisons=(
                ("Hourglass-20", "ResNet-4"),
                ("Hourglass-52", "ResNet-4"),
                # what masks for the unseen classes would add: the gap the heads should close
                ("Hourglass-20, all masks", "Hourglass-20"),
            ),
        ),
        Study(
            "table4_reverse",
            "Table 4, reverse split: masks of the 60 non-VOC classes only, scored on VOC",
            (
                Row("ResNet-4", (_head("resnet4"), "data.mask_split=nonvoc")),
                Row("Hourglass-20", (_head("hourglass20"), "data.mask_split=nonvoc")),
                Row("Hourglass-52", (_head("hourglass52"), "data.mask_split=nonvoc")),
            ),
            comparisons=(("Hourglass-20", "ResNet-4"), ("Hourglass-52", "ResNet-4")),
        ),
        Study(
            "table5",
            "Table 5: what makes the hourglass generalise (No LRS: no long-range skips; No ED: "
            "no encoder-decoder)",
            (
                Row("ResNet-20", (_head("resnet20"),), paper=_paper(31.4, 39.1, 28.8)),
                Row("Hourglass-20", (_head("hourglass20"),), paper=_paper(34.1, 39.8, 32.2)),
                Row(
                    "Hourglass-20 No LRS",
                    (_head("hourglass20_no_shortcut"),),
                    paper=_paper(33.6, 39.2, 31.7),
                ),
                Row(
                    "Hourglass-20 No ED",
                    (_head("hourglass20_uniform_size"),),
                    paper=_paper(31.7, 39.1, 29.2),
                ),
            ),
            paper_metric="mask mAP (Deep-MAC)",
            comparisons=(
                ("Hourglass-20", "ResNet-20"),
                ("Hourglass-20 No LRS", "Hourglass-20"),
                ("Hourglass-20 No ED", "Hourglass-20"),
            ),
        ),
        Study(
            "table6",
            "Table 6: receptive field, ResNet-20 with dilated (rate 2) convolutions",
            (
                # resnet20_dilated0 is resnet20 (same modules, same init): named so, the row
                # is table5's ResNet-20 run and ``--reuse`` shares it.
                Row("0 dilated", (_head("resnet20"),), paper=_paper(32.2, 39.4, 29.9)),
                Row("10 dilated", (_head("resnet20_dilated10"),), paper=_paper(32.7, 39.1, 30.6)),
                Row("20 dilated", (_head("resnet20_dilated20"),), paper=_paper(32.8, 39.3, 30.7)),
            ),
            paper_metric="mask mAP (Deep-MAC)",
            comparisons=(("10 dilated", "0 dilated"), ("20 dilated", "0 dilated")),
        ),
        Study(
            "table7",
            "Table 7 at CPU scale: the Hourglass-20 network as the mask head, or moved into the "
            "backbone (on the whole stride-4 map, before the crop) with a ResNet-4 head; the "
            "paper's figures are its deep-head (HG-52 backbone, HG-52 head) and deep-backbone "
            "(HG-104 backbone, ResNet-4 head) rows",
            (
                # Hourglass-20 and ResNet-4 are Table 4's rows (same configs): --reuse of a
                # table4 study folder fills them.
                Row("Hourglass-20", (_head("hourglass20"),), paper=_paper(78.4, 80.4, 77.8)),
                Row(
                    "Hourglass-20 in the backbone, ResNet-4 head",
                    ("model.backbone=efficientnet_lite0_hourglass20", _head("resnet4")),
                    paper=_paper(71.4, 79.2, 68.8),
                ),
                Row("ResNet-4", (_head("resnet4"),)),
            ),
            comparisons=(
                ("Hourglass-20", "Hourglass-20 in the backbone, ResNet-4 head"),
                ("Hourglass-20 in the backbone, ResNet-4 head", "ResNet-4"),
            ),
        ),
        Study(
            "table7_gpu",
            "Table 7 as the paper runs it: the hourglass in the mask head or in the backbone "
            "(hourglass backbones from scratch: GPU scale, hours per run on 2 CPU cores)",
            (
                Row(
                    "HG-52 backbone, HG-52 head",
                    ("model.backbone=hourglass52", _head("hourglass52"), "model.freeze_at=0"),
                    paper=_paper(78.4, 80.4, 77.8),
                ),
                Row(
                    "HG-104 backbone, ResNet-4 head",
                    ("model.backbone=hourglass104", _head("resnet4"), "model.freeze_at=0"),
                    paper=_paper(71.4, 79.2, 68.8),
                ),
            ),
            comparisons=(("HG-52 backbone, HG-52 head", "HG-104 backbone, ResNet-4 head"),),
        ),
        Study(
            "table1_2",
            "Tables 1 and 2: Deep-MARC mask head trained on GT boxes or proposals + GT, default "
            "vs Hourglass-52 head; masks scored from GT boxes (detection AP is about 0 here)",
            tuple(
                Row(
                    f"{label}, {boxes}",
                    (*head, f"model.mask_train_boxes={boxes}"),
                    preset="deepmarc_cpu",
                    paper=paper,
                )
                for label, head, boxes, paper in (
                    ("Default", _DEEPMARC_DEFAULT, "gt", {"voc": 41.1, "nonvoc": 29.3}),
                    ("Default", _DEEPMARC_DEFAULT, "proposals+gt", {"voc": 40.9, "nonvoc": 19.6}),
                    ("HG-52", _DEEPMARC_HG52, "gt", {"voc": 41.9, "nonvoc": 34.4}),
                    ("HG-52", _DEEPMARC_HG52, "proposals+gt", {"voc": 42.0, "nonvoc": 20.6}),
                )
            ),
            paper_metric="mask mAP from detections (Table 2 gives VOC and non-VOC only)",
            comparisons=(
                ("Default, gt", "Default, proposals+gt"),
                ("HG-52, gt", "HG-52, proposals+gt"),
                ("HG-52, gt", "Default, gt"),
            ),
        ),
        Study(
            "appendix_c",
            "Appendix C: masks of one class only (person, COCO id 1)",
            (
                Row("ResNet-4", (_head("resnet4"), "data.mask_split=1")),
                Row("Hourglass-20", (_head("hourglass20"), "data.mask_split=1")),
            ),
            comparisons=(("Hourglass-20", "ResNet-4"),),
        ),
        Study(
            "scaling",
            "Data scaling: ResNet-4 vs Hourglass-20 on 25%, 50% and 100% of the training images",
            tuple(
                Row(f"{label} {int(f * 100)}%", (_head(head), f"data.train_fraction={f}"))
                for f in (0.25, 0.5, 1.0)
                for label, head in (("ResNet-4", "resnet4"), ("Hourglass-20", "hourglass20"))
            ),
            comparisons=tuple((f"Hourglass-20 {p}%", f"ResNet-4 {p}%") for p in (25, 50, 100)),
        ),
    )
}


def get_study(name: str) -> Study:
    """Raises ``ValueError`` for an unknown name, with a did-you-mean."""
    if name not in STUDIES:
        close = difflib.get_close_matches(name, STUDIES, n=2)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ValueError(f"unknown study {name!r}{hint} (studies: {', '.join(STUDIES)})")
    return STUDIES[name]
