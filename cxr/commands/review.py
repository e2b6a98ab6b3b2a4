"""`cxr review export`: every verdict as CSV (no keys or file names: they hold patient identifiers)."""

from __future__ import annotations

import sys
from pathlib import Path

from cxr import reviews, target


def register(subparsers) -> None:
    parser = subparsers.add_parser("review", help="radiologists' verdicts: export as CSV",
                                   description=__doc__.splitlines()[0])
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    export = actions.add_parser("export", help="write every verdict as CSV (stdout, or --out FILE)")
    export.add_argument("--out", type=Path, help="write the CSV here instead of standard output")
    target.add_arguments(export)
    export.set_defaults(run=run_export)


def run_export(args) -> int:
    deployment = target.resolve(args)
    rows = reviews.verdict_rows(reviews.items(deployment, reviews.review_table(deployment)))
    text = reviews.to_csv(rows)
    if args.out:
        args.out.write_text(text)
        print(f"{len(rows)} verdict(s) written to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
