"""The ``synaps`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="synaps", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="run the simulated experiment into the embedded catalog, with figures"
    )
    demo.add_argument("--out", default="synaps-results", help="results folder")
    demo.add_argument(
        "--size", type=int, default=None, help="phantom edge in pixels (default: benchmark sizes)"
    )
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--angles", type=int, default=90, help="tomography angles")
    demo.add_argument(
        "--no-adaptive",
        action="store_true",
        help="skip the adaptive experiment (agent against raster)",
    )
    commands.add_parser(
        "train-segmenter",
        help="reproduce the shipped U-Net weights (see `synaps train-segmenter --help`)",
        add_help=False,
    )
    argv = list(argv) if argv is not None else sys.argv[1:]
    if argv[:1] == ["train-segmenter"]:
        from .segment.train import main as train_main

        return train_main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        run_demo(
            args.out,
            size=args.size,
            seed=args.seed,
            num_angles=args.angles,
            adaptive=not args.no_adaptive,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
