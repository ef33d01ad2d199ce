"""The ``deepmac`` command: parses arguments and dispatches to a command; no logic of its own.

Each command is registered by an ``_add_*`` function; the work happens in
``deepmac.cli.commands`` (imported only when a command runs, so ``--help`` is fast).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from deepmac.cli.arguments import float_in, int_at_least
from deepmac.cli.errors import UsageError
from deepmac.utils.logs import configure_process_logging

#: The ``checkpoint`` argument of eval, predict and export.
CHECKPOINT_HELP = "OUT/last.pt of a training run, or a bundled model's name (deepmac models)"

EXAMPLES = """\
examples:
  deepmac demo --out runs/demo
  deepmac models
  deepmac plot runs/tiny                  # runs/tiny/curves.png: losses, lr, eval metrics
  deepmac study table4 --seeds 0 1 2 --steps 1500 --out runs/table4
  deepmac predict box-prompted-all --images photos/ --boxes boxes.json --out masks.json
  deepmac train box_prompted_cpu --init box-prompted-all --data-root my_coco/ --out runs/mine
  deepmac train --list
  deepmac train box_prompted_cpu --data-root ../shared/data/coco_tiny --out runs/tiny --steps 500
  deepmac train box_prompted_cpu --out runs/tiny --resume
  deepmac train box_prompted_cpu --print-config > my.json; deepmac train --config my.json
  deepmac eval runs/tiny/last.pt --data-root ../shared/data/coco_mini --out metrics.json
  deepmac predict runs/tiny/last.pt --images DIR --boxes boxes.json --out masks.json --viz viz/
  deepmac predict runs/tiny/last.pt --images photos/ --boxes boxes.csv --format instances \
      --segmentation polygon --out instances.json --viz viz/
  deepmac export runs/tiny/last.pt --onnx runs/tiny/model.onnx
  deepmac heads
  deepmac score results.json --gt ../shared/data/coco_mini/annotations/instances_val2017.json
  python -m torch.distributed.run --nproc_per_node=2 -m deepmac train box_prompted_cpu ...
"""


def _add_demo(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the demo on the embedded COCO sample",
        description="Segment the held-out images of the embedded COCO sample from their boxes "
        "with the bundled box-prompted-voc model (masks of VOC classes only in training): split "
        "mIoU beside the filled-box baseline, overlays; then fine-tune it on the sample's 16 "
        "training images and score again.",
    )
    parser.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    parser.add_argument(
        "--steps", type=int_at_least(1), help="fine-tuning steps (default 120, 2-3 minutes)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from deepmac.cli.demo import run_demo

    run_demo(args.out, steps=args.steps, progress=not args.no_progress)
    return 0


def _add_train(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model from a preset",
        description="Train from a named preset plus key=value overrides (e.g. "
        "model.mask_head=hourglass52 train.lr=5e-4). Writes OUT/last.pt, OUT/config.json and "
        "OUT/metrics.jsonl.",
    )
    parser.add_argument(
        "preset", nargs="?", help="preset name (see --list); optional with --config"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument("--list", action="store_true", help="list the presets and exit")
    parser.add_argument(
        "--data-root",
        action="append",
        metavar="DIR",
        help="COCO-style root (annotations/instances_<split>.json + <split>/); may repeat; "
        "default: the embedded demo sample",
    )
    parser.add_argument("--out", help="run folder (default runs/PRESET)")
    parser.add_argument(
        "--steps", type=int_at_least(1), help="optimizer steps (overrides train.steps)"
    )
    parser.add_argument(
        "--init",
        metavar="MODEL|FILE|imagenet",
        help="start from a bundled model (deepmac models) or a deepmac checkpoint: every "
        "tensor of the model, whose architecture then comes from it; or a backbone weights "
        "file, or 'imagenet' (optional package)",
    )
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        help="training device (overrides train.device; default auto: cuda when available)",
    )
    parser.add_argument(
        "--amp",
        choices=["none", "bf16", "fp16"],
        help="autocast dtype (overrides train.amp), as --amp of eval and predict",
    )
    _add_train_run_options(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    parser.set_defaults(handler=_lazy("run_train"))


def _add_train_run_options(parser: argparse.ArgumentParser) -> None:
    """``train``'s options about the run folder and the config it starts from."""
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in OUT exactly (its config; overrides may not change the model)",
    )
    existing.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run OUT holds (without it, or --resume, a folder holding a run is "
        "refused)",
    )
    parser.add_argument(
        "--config",
        metavar="FILE.json",
        help="start from this config (e.g. a run's config.json, or --print-config's output) "
        "instead of PRESET's; overrides still apply",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the full config (PRESET or --config, with the overrides) as JSON and exit",
    )


def _add_models(subparsers) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the bundled models",
        description="The trained models shipped inside the package, usable by name wherever a "
        "checkpoint is taken (predict, eval, export, train --init): one line each with its "
        "card's summary and metrics; docs/models.md has the full cards.",
    )
    parser.set_defaults(handler=_lazy("run_models"))


def _add_plot(subparsers) -> None:
    parser = subparsers.add_parser(
        "plot",
        help="draw a run's training curves to a PNG",
        description="Losses, learning rate and evaluation metrics of a training run, from its "
        "metrics.jsonl, drawn with matplotlib (pip install 'deepmac[plot]'). Works while the "
        "run is still training.",
    )
    parser.add_argument("run_dir", help="the run folder (deepmac train --out)")
    parser.add_argument("--out", help="PNG to write (default RUN_DIR/curves.png)")
    parser.set_defaults(handler=_lazy("run_plot"))


def _add_study(subparsers) -> None:
    from deepmac.studies.tables import STUDIES  # plain data: no torch

    listing = "; ".join(f"{name}: {study.title}" for name, study in STUDIES.items())
    parser = subparsers.add_parser(
        "study",
        help="train and score every row of one of the paper's tables",
        description="Train every row of a paper table with every seed, score each run from "
        "ground-truth boxes on the evaluation split, and write OUT/results.json (one record "
        "per run), OUT/results.md (mean +- std beside the paper) and OUT/TABLE.png. Finished "
        "runs are reused and unfinished ones resumed, so a study started again continues. "
        f"Tables: {listing}.",
    )
    parser.add_argument("table", choices=sorted(STUDIES), metavar="TABLE", help="the study")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="for every run")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="default 0 1 2")
    parser.add_argument("--steps", type=int_at_least(1), help="steps of every run (default: "
                        "the preset's)")  # fmt: skip
    parser.add_argument("--out", help="study folder (default runs/study_TABLE)")
    parser.add_argument("--rows", nargs="+", metavar="ROW", help="only these rows (label or "
                        "run-folder name, e.g. resnet_4; default: all)")  # fmt: skip
    parser.add_argument("--jobs", type=int_at_least(1), default=1, help="runs trained at once, "
                        "each on its share of the cores (default 1; 2 on 2 cores gave 1.27x "
                        "the throughput)")  # fmt: skip
    parser.add_argument("--reuse", nargs="+", metavar="DIR", help="other study folders: a run "
                        "trained there with the same config (e.g. table4's Hourglass-20 for "
                        "table5's) is reused, not trained again")  # fmt: skip
    parser.add_argument("--records", nargs="+", metavar="JSON", help="results.json of this "
                        "study run on another machine (e.g. docs/results/table4/results.json): "
                        "its runs of the same steps and overrides count as done")  # fmt: skip
    parser.add_argument(
        "--data",
        help="folder holding coco_tiny and coco_mini (default ../shared/data): trains on "
        "coco_tiny train+val and coco_mini train, scores on coco_mini val2017",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    parser.add_argument("--report-only", action="store_true", help="train nothing: rewrite "
                        "the report of the runs already scored in OUT")  # fmt: skip
    parser.set_defaults(handler=_lazy("run_study_command"))


def _add_inference_device(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--amp`` of the commands that run a trained model. The choices are
    spelled out here (not imported from ``deepmac.engine``) so that ``--help`` imports no torch;
    ``deepmac.engine.devices`` and ``deepmac.engine.precision`` check the same names."""
    parser.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda", "auto"],
        help="where the model runs (default cpu; auto: cuda when available)",
    )
    parser.add_argument(
        "--amp",
        default="none",
        choices=["none", "bf16", "fp16"],
        help="autocast on that device (default none; fp16 is for CUDA)",
    )


def _add_eval(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint: detection AP, or split mIoU from ground-truth boxes",
        description="A box-prompted model: masks from the ground-truth boxes of every image; "
        "mIoU overall / VOC / non-VOC and mask AP with the GT boxes as detections of score 1. "
        "Deep-MAC / Deep-MARC: box AP and mask AP (overall / VOC / non-VOC) of the detections; "
        "with --gt-boxes they are scored like a box-prompted model.",
    )
    parser.add_argument("checkpoint", help=CHECKPOINT_HELP)
    parser.add_argument(
        "--gt-boxes",
        action="store_true",
        help="Deep-MAC / Deep-MARC: segment the ground-truth boxes instead of detecting "
        "(split mIoU)",
    )
    parser.add_argument("--data-root", help="COCO-style root (default: the run's eval root)")
    parser.add_argument("--split", default="val2017", help="default val2017")
    parser.add_argument("--max-images", type=int_at_least(0), default=0, help="0 = all")
    _add_inference_device(parser)
    parser.add_argument("--out", help="write the metrics as JSON here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_lazy("run_eval"))


def _add_predict(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="masks for images: from box prompts, or detected by Deep-MAC",
        description="Masks for images. With --boxes the boxes prompt the masks (any category); "
        "a Deep-MAC checkpoint without --boxes detects and segments. Boxes are matched to images "
        "by file name, then by numeric id (000000000139.jpg is image 139); images of the boxes "
        "file that are not given are skipped with a count. Images are read as displayed (EXIF "
        "orientation applied), or in the frame whose size an instances JSON gives them; folder "
        "entries that are not readable images are skipped with one warning. --format instances "
        "writes a COCO instances JSON that CVAT and Label Studio import (their COCO importers).",
    )
    parser.add_argument("checkpoint", help=CHECKPOINT_HELP)
    parser.add_argument(
        "--images",
        nargs="+",
        required=True,
        help="image files, folders, or .txt lists of image paths (one a line, relative to the "
        "list's folder)",
    )
    parser.add_argument("--recursive", action="store_true", help="also the folders' subfolders")
    parser.add_argument(
        "--boxes",
        help="box prompts: a COCO instances JSON, a COCO results JSON (image_id a file name or "
        "a numeric id), or a CSV with the header image,x1,y1,x2,y2[,label][,score]; optional "
        "for a Deep-MAC checkpoint, which then detects",
    )
    parser.add_argument(
        "--box-format",
        choices=["xyxy", "xywh"],
        help="how --boxes gives a box: xyxy corners, or xywh (corner, width, height); default "
        "xywh for JSON (COCO's), xyxy for CSV (whose columns are then image,x,y,w,h)",
    )
    parser.add_argument(
        "--score-threshold",
        type=float_in(0.0, 1.0),
        default=0.3,  # deepmac.inference.detector.DEFAULT_SCORE_THRESHOLD (no torch here)
        help="Deep-MAC detections below this score are dropped (default 0.3)",
    )
    parser.add_argument(
        "--mask-threshold",
        type=float_in(0.0, 1.0),
        default=0.5,
        help="mask probability above which a pixel is in the mask (default 0.5)",
    )
    _add_predict_outputs(parser)
    _add_inference_device(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    parser.set_defaults(handler=_run_predict)


def _add_predict_outputs(parser: argparse.ArgumentParser) -> None:
    """``predict``'s output options: the JSON file, its format and encoding, overlays."""
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument(
        "--format",
        choices=["results", "instances"],
        default="results",
        help="results (default): a COCO results list (deepmac score reads it); instances: a "
        "COCO instances JSON with images, categories and annotations (id, area, iscrowd; the "
        "input's crowd annotations kept), for annotation tools",
    )
    parser.add_argument(
        "--segmentation",
        choices=["rle", "polygon"],
        default="rle",
        help="mask encoding of --format instances: rle (default; exact) or polygon (the mask "
        "outline, simplified; holes filled)",
    )
    parser.add_argument(
        "--polygon-tolerance",
        type=float_in(0.0),
        default=1.0,
        help="pixels a polygon may stray from the mask outline (default 1; 0: every pixel corner)",
    )
    parser.add_argument(
        "--viz",
        help="also write PNG overlays into this folder (ground truth beside prediction when "
        "--boxes is an instances JSON with masks)",
    )


def _run_predict(args: argparse.Namespace) -> int:
    from deepmac.cli.predict import run_predict

    return run_predict(args)


def _lazy(name: str):
    """A handler that imports ``deepmac.cli.commands`` (and torch models) only when run."""

    def handler(args: argparse.Namespace) -> int:
        from deepmac.cli import commands

        return getattr(commands, name)(args)

    return handler


def _add_export(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX and check it against PyTorch",
        description="Write an ONNX graph of a trained model (box-prompted: image + boxes in, "
        "mask probabilities out; Deep-MAC: image in, top-K boxes, scores, labels, mask "
        "probabilities out), then run it in onnxruntime beside PyTorch on random inputs "
        "(1, 7 and 0 boxes) and report the largest difference. Needs the [export] extra.",
    )
    parser.add_argument("checkpoint", help=CHECKPOINT_HELP)
    parser.add_argument("--onnx", required=True, help="ONNX file to write")
    parser.add_argument(
        "--prompt",
        action="store_true",
        help="export the box-prompted graph of a Deep-MAC checkpoint (boxes in)",
    )
    # torch.onnx's dynamo exporter, which export uses, writes opset 18 and later.
    parser.add_argument(
        "--opset", type=int_at_least(18), default=18, help="ONNX opset, >= 18 (default 18)"
    )
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime check")
    parser.add_argument(
        "--tolerance", type=float_in(0.0), default=1e-4, help="max probability difference (1e-4)"
    )
    parser.set_defaults(handler=_lazy("run_export"))


def _add_heads(subparsers) -> None:
    parser = subparsers.add_parser(
        "heads",
        help="list the mask heads of the registry",
        description="Print every mask head: depth, parameters and the paper table that uses it.",
    )
    positive = int_at_least(1)
    parser.add_argument(
        "--in-channels", type=positive, default=50, help="input channels (default 50)"
    )
    parser.add_argument("--num-init-channels", type=positive, default=64, help="default 64")
    parser.add_argument("--mask-size", type=positive, default=32, help="crop side S (default 32)")
    parser.set_defaults(handler=_run_heads)


def _run_heads(args: argparse.Namespace) -> int:
    from deepmac.mask_heads import format_heads_table

    print(format_heads_table(args.in_channels, args.num_init_channels, args.mask_size))
    return 0


def _add_score(subparsers) -> None:
    parser = subparsers.add_parser(
        "score",
        help="score a COCO results JSON with split mask/box AP",
        description="COCO mask and box AP of a results file, overall and per class split "
        "(VOC / non-VOC), with pycocotools.",
    )
    parser.add_argument("results", help="COCO results JSON (list of detections, RLE masks)")
    parser.add_argument("--gt", required=True, help="COCO instances JSON with the ground truth")
    parser.add_argument("--out", help="write the metrics as JSON here")
    parser.set_defaults(handler=_run_score)


def _run_score(args: argparse.Namespace) -> int:
    from deepmac.cli.paths import check_output_file
    from deepmac.cli.report import print_metrics, write_json_atomic
    from deepmac.evaluation import evaluate_coco

    if args.out:
        inputs = {"the results file": args.results, "the --gt file": args.gt}
        check_output_file(args.out, "--out", inputs)
    metrics = evaluate_coco(args.gt, args.results)
    print_metrics(metrics)
    if args.out:
        write_json_atomic(args.out, metrics)
    return 0


def _add_convert_tf(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert-tf",
        help="convert official TensorFlow Deep-MAC / Deep-MARC weights to a checkpoint",
        description="Read a TF2 checkpoint or SavedModel of the official code (needs "
        "TensorFlow: pip install tensorflow-cpu) and write a deepmac checkpoint. --model deepmac "
        "gives a model for predict/eval/load_model; deepmarc and head:NAME give a mask head "
        "(deepmac.convert.load_mask_head). Every TF variable is converted or reported.",
    )
    parser.add_argument(
        "src",
        help="SavedModel folder, checkpoint folder or prefix (.../ckpt-0), or an "
        "exported-model folder holding checkpoint/ and saved_model/",
    )
    parser.add_argument(
        "--model",
        required=True,
        metavar="{deepmac,deepmarc,head:NAME}",
        help="what SRC holds: the whole Deep-MAC, the Deep-MARC mask head of a Model Garden "
        "checkpoint, or one mask head (e.g. head:hourglass100)",
    )
    parser.add_argument("--out", required=True, help="checkpoint to write (.pt)")
    parser.add_argument(
        "--mask-head", help="Deep-MAC mask head name (default: the one the weights fit)"
    )
    parser.add_argument(
        "--mask-size", type=int_at_least(1), default=32, help="mask crop side (default 32)"
    )
    parser.add_argument(
        "--image-size",
        type=int_at_least(1),
        default=1024,
        help="input side the model runs at (default 1024, as deepmac_1024x1024_coco17)",
    )
    parser.add_argument("--tf-root", help="variable-name prefix of the model in SRC, if unusual")
    parser.add_argument("--report", help="also write the full conversion report as JSON here")
    parser.set_defaults(handler=_run_convert_tf)


def _run_convert_tf(args: argparse.Namespace) -> int:
    from deepmac.cli.convert import convert_tf_command

    return convert_tf_command(args)


def _version() -> str:
    """The installed package's version (``deepmac.__version__``, which imports no torch)."""
    from deepmac import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepmac",
        description="Partially supervised instance segmentation with deep mask heads "
        "(Deep-MAC, Birodkar et al., ICCV 2021).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-v",
        "--verbose",
        "--debug",
        dest="verbose",
        action="store_true",
        help="debug logging, and a traceback with an error",
    )
    parser.add_argument("--version", action="version", version=f"deepmac {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (
        _add_demo,
        _add_train,
        _add_models,
        _add_plot,
        _add_study,
        _add_eval,
        _add_predict,
        _add_export,
        _add_convert_tf,
        _add_heads,
        _add_score,
    ):
        add(subparsers)
    for command in subparsers.choices.values():
        # Also after the command (deepmac score ... --debug); SUPPRESS keeps the top-level value.
        command.add_argument(
            "-v",
            "--verbose",
            "--debug",
            dest="verbose",
            action="store_true",
            default=argparse.SUPPRESS,
            help="debug logging, and a traceback with an error",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    # argparse stops collecting positionals once options start; key=value overrides may
    # follow options (deepmac train PRESET --steps 5 train.lr=1e-4), so gather them here.
    if extras:
        overrides = [e for e in extras if "=" in e and not e.startswith("-")]
        if getattr(args, "command", None) not in ("train", "study") or len(overrides) != len(
            extras
        ):
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        args.overrides = [*args.overrides, *overrides]
    configure_process_logging(logging.DEBUG if args.verbose else logging.INFO)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except _EXPECTED_ERRORS as err:
        # Expected failures (bad arguments, files, data; a full disk) end with one line, not a
        # traceback; -v / --debug shows it. Anything else is a bug and keeps its traceback.
        if args.verbose:
            raise
        status = 2 if isinstance(err, UsageError) else 1
        # A RuntimeError comes from deep down (torch, the training loop): say where to look.
        hint = " (rerun with --debug for the traceback)" if isinstance(err, RuntimeError) else ""
        print(f"deepmac {args.command}: error: {_one_line(err)}{hint}", file=sys.stderr)
        return status
    except KeyboardInterrupt:
        if args.verbose:
            raise
        # Checkpoints and results are written atomically: what was saved before is intact.
        print(f"deepmac {args.command}: interrupted", file=sys.stderr)
        return 130


#: What ``main`` reports in one line: ``UsageError`` (exit 2); data and file errors
#: (``ValueError`` incl. ``CheckpointError``, ``OSError`` incl. missing files and a full disk,
#: ``TypeError``), a missing optional package (``ImportError``) and the training loop's
#: ``RuntimeError`` (non-finite loss, empty loader) (exit 1).
_EXPECTED_ERRORS = (ValueError, OSError, TypeError, ImportError, RuntimeError)


def _one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (some library messages span several)."""
    text = str(err) or type(err).__name__
    if isinstance(err, OSError) and err.filename is not None and str(err.filename) not in text:
        text = f"{text}: {err.filename}"
    return " ".join(text.split())


if __name__ == "__main__":
    raise SystemExit(main())
