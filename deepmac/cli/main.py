"""The ``deepmac`` command: parses arguments and dispatches to a command; no logic of its own.

Commands that exist today are registered below; training, evaluation of checkpoints,
prediction and export join as the models land (see README, "What works today").
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

EXAMPLES = """\
examples:
  deepmac demo --out runs/demo
  deepmac heads
  deepmac score results.json --gt ../shared/data/coco_mini/annotations/instances_val2017.json
"""


def _add_demo(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the demo on the embedded COCO sample",
        description="Load the embedded COCO sample (masks for VOC classes only), paste "
        "box-prompted masks, score them with the split metrics and write overlays.",
    )
    parser.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    parser.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from deepmac.cli.demo import run_demo

    run_demo(args.out)
    return 0


def _add_heads(subparsers) -> None:
    parser = subparsers.add_parser(
        "heads",
        help="list the mask heads of the registry",
        description="Print every mask head: depth, parameters and the paper table that uses it.",
    )
    parser.add_argument("--in-channels", type=int, default=50, help="input channels (default 50)")
    parser.add_argument("--num-init-channels", type=int, default=64, help="default 64")
    parser.add_argument("--mask-size", type=int, default=32, help="crop side S (default 32)")
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
    from deepmac.cli.report import print_metrics, write_json_atomic
    from deepmac.evaluation import evaluate_coco

    metrics = evaluate_coco(args.gt, args.results)
    print_metrics(metrics)
    if args.out:
        write_json_atomic(args.out, metrics)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepmac",
        description="Partially supervised instance segmentation with deep mask heads "
        "(Deep-MAC, Birodkar et al., ICCV 2021).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_demo, _add_heads, _add_score):
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, TypeError) as err:
        # User errors (bad files, bad arguments) end with one clear line, not a traceback.
        if args.verbose:
            raise
        print(f"deepmac {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
