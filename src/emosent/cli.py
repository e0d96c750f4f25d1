"""Command line: parses arguments and calls the same public functions a Python user calls."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emosent.encoders import WeightsUnavailableError


def cmd_make_sample(args: argparse.Namespace) -> int:
    from emosent.data.sample import make_sample

    out = make_sample(args.out, n_per_class=args.n_per_class, seed=args.seed)
    print(f"wrote a MELD-layout sample dataset to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emosent", description="Emotion and sentiment recognition in video.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = commands.add_parser("make-sample", help="write a small synthetic dataset in the MELD layout")
    p.add_argument("out", type=Path, help="folder to create")
    p.add_argument("--n-per-class", type=int, default=10, help="training clips per emotion (dev/test get half)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_make_sample)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.run(args)
    except (ValueError, OSError, WeightsUnavailableError) as err:
        # errors meant for the user (bad argument, bad file, offline weights): one line, no traceback
        print(f"emosent {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
