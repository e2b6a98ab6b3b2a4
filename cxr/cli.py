"""Entry point of the `cxr` console script: builds the parser from the command modules.

Exit status: 0 success, 1 the command ran and found a problem, 2 usage error.
"""

from __future__ import annotations

import argparse
import os
import sys

from cxr.commands import (
    audit,
    batch_predict,
    check,
    cost,
    deid,
    demo,
    deploy,
    doctor,
    evaluate,
    fsck,
    import_medmnist,
    local,
    models,
    predict,
    review,
    reviewers,
    status,
    teardown,
    train,
    train_local,
    upload_dataset,
)
from cxr.errors import UsageError, UserError

COMMANDS = (check, deid, demo, local, train_local, evaluate, import_medmnist, upload_dataset, train, status, predict,
            cost, fsck, audit, models, batch_predict, review, reviewers, doctor, deploy, teardown)

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr", description="Serverless chest X-ray pneumonia classification.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except UsageError as exc:
        parser.error(str(exc))  # prints usage and exits 2
    except UserError as exc:
        print(f"cxr {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `cxr ... | head` closed the pipe: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 141


if __name__ == "__main__":
    sys.exit(main())
