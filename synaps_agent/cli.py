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
    replay = commands.add_parser(
        "replay",
        help="feed a stored run through the live callbacks again (stored as new analysis runs)",
    )
    replay.add_argument("uid", help="uid of the raw run")
    replay.add_argument(
        "--catalog", default="synaps-results/catalog", help="embedded catalog folder"
    )
    replay.add_argument("--no-segment", action="store_true", help="reconstruct only")
    serve = commands.add_parser(
        "serve", help="serve the embedded catalog over HTTP (loopback, with an API key)"
    )
    serve.add_argument(
        "--catalog", default="synaps-results/catalog", help="embedded catalog folder"
    )
    commands.add_parser(
        "train-segmenter",
        help="reproduce the shipped U-Net weights (see `synaps train-segmenter --help`)",
        add_help=False,
    )
    commands.add_parser(
        "analysis",
        help="run reconstructions (ptychography, tomography), segmentation and the agent for "
        "a remote RunEngine "
        "(see `synaps analysis --help`)",
        add_help=False,
    )
    argv = list(argv) if argv is not None else sys.argv[1:]
    if argv[:1] == ["train-segmenter"]:
        from .segment.train import main as train_main

        return train_main(argv[1:])
    if argv[:1] == ["analysis"]:
        from .remote import main as remote_main

        return remote_main(argv[1:])
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
    elif args.command == "replay":
        from .catalog import open_catalog
        from .replay import replay_run

        with open_catalog(args.catalog) as catalog:
            try:
                result = replay_run(catalog, args.uid, segment=not args.no_segment)
            except (KeyError, ValueError) as exc:
                print(f"synaps replay: {exc.args[0] if exc.args else exc}", file=sys.stderr)
                return 2
        print(f"analysis runs: {', '.join(result['analysis_uids'])}")
        if result["errors"]:
            print("errors:\n  " + "\n  ".join(result["errors"]))
            return 1
    elif args.command == "serve":
        import signal
        import time

        from .catalog import open_catalog

        # Ctrl-C stops the server even when the shell that started it ignores SIGINT (as
        # a background job's does, and Python then keeps ignoring it); SIGTERM (kill,
        # systemd, docker stop) stops it the same clean way.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        with open_catalog(args.catalog) as catalog:
            print(f"serving {catalog.directory} at {catalog.uri}")
            print("(loopback only; the API key is in the URL) -- Ctrl-C to stop")
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
