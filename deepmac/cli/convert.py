"""``deepmac convert-tf``: official TensorFlow weights -> a deepmac PyTorch checkpoint."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def convert_tf_command(args: argparse.Namespace) -> int:
    """Run the conversion ``args`` describe (see ``deepmac.cli.main._add_convert_tf``).

    Returns:
        0 on success; 1 for an unknown ``--model``, a path with no TF checkpoint or SavedModel,
        missing TensorFlow, or weights that do not fit (the reason, with the variable names
        involved, is printed to stderr).
    """
    from deepmac.convert import (  # noqa: PLC0415 - torch and the converter load on use
        ConversionError,
        ConvertOptions,
        TensorFlowNotInstalled,
        convert_tf,
        save_conversion,
    )

    options = ConvertOptions(
        mask_head=args.mask_head,
        mask_size=args.mask_size,
        image_size=args.image_size,
        tf_root=args.tf_root,
    )
    start = time.perf_counter()
    try:
        conversion = convert_tf(args.src, args.model, options)
    except (TensorFlowNotInstalled, FileNotFoundError) as err:
        print(f"deepmac convert-tf: error: {err}", file=sys.stderr)
        return 1
    except ConversionError as err:
        print(f"deepmac convert-tf: error: {err}", file=sys.stderr)
        if args.report and err.report is not None:
            _write_json(args.report, err.report.to_dict())
            print(f"full report: {args.report}", file=sys.stderr)
        return 1
    save_conversion(conversion, args.out)
    if args.report:
        _write_json(args.report, conversion.report.to_dict())
    print(f"{conversion.description}")
    print(conversion.report.summary())
    print(
        f"wrote {args.out} ({conversion.model_type} checkpoint) in "
        f"{time.perf_counter() - start:.1f} s"
    )
    return 0


def _write_json(path: str, data: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=1) + "\n")
