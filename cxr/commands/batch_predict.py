"""`cxr batch-predict s3://bucket/prefix/ | FOLDER --out DIR`: score every X-ray with SageMaker Batch Transform.

The serving model (or ``--model``, a SageMaker model name) runs as a transform job over the prefix, or over the
folder uploaded to the inference bucket's ``batch-input/``; with ``endpoint_mode=lambda``, the predict function
scores each staged object instead (no SageMaker model exists in that mode); one JSON per image and
``predictions.csv`` are written to ``--out``. A file the model cannot take gets its error in its JSON and row;
the others are scored.
Exit status: 0 every file predicted, 1 some were rejected or missing.
"""

from __future__ import annotations

import json
from pathlib import Path

from cxr import target
from cxr.batch_scoring import BatchScoring
from infra import wiring


def register(subparsers) -> None:
    parser = subparsers.add_parser("batch-predict", help="score a folder or S3 prefix with Batch Transform",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("source", help="s3://bucket/prefix/ or a local folder")
    parser.add_argument("--out", required=True, type=Path, help="folder for the JSON per image and predictions.csv")
    parser.add_argument("--model", default=None, help="SageMaker model name (default: the endpoint's)")
    parser.add_argument("--instance-type", default="ml.c6i.large", help="transform instance (CPU: ONNX Runtime)")
    parser.add_argument("--json", action="store_true")
    target.add_arguments(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    deployment = target.resolve(args)
    functions, predict = deployment.client("lambda"), deployment.function_name(wiring.PREDICT, "Inference")
    variables = functions.get_function_configuration(FunctionName=predict)["Environment"]["Variables"]
    lambda_mode = variables.get(wiring.ENV_ENDPOINT_MODE) == "lambda"
    scoring = BatchScoring(deployment.client("sagemaker"), deployment.client("s3"), deployment.stage,
                           deployment.bucket(wiring.INFERENCE), args.instance_type,
                           poll_seconds=0.5 if deployment.is_local else 15.0,
                           functions=functions if lambda_mode else None,
                           predict_function=predict if lambda_mode else None)
    result = scoring.run(args.source, args.out, args.model, log=(lambda _: None) if args.json else print)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        counts = ", ".join(f"{n} {status}" for status, n in sorted(result["counts"].items()))
        print(f"{result['files']} file(s): {counts}; {result['csv']}")
    return 0 if set(result["counts"]) == {"predicted"} else 1
