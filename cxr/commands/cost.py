"""`cxr cost`: what serving and training cost, from the configuration, measured latencies and dated prices."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

from botocore.exceptions import ClientError

from cxr import costs, deployment, target
from cxr.errors import UsageError, UserError
from infra import wiring

LATENCY_FILE = deployment.ROOT / "bench" / "results" / "latency.json"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "cost",
        help="estimate serving and training costs against Rekognition Custom Labels and Vertex AI AutoML",
        description="Estimated cost per 1,000 predictions and per month for this deployment's serverless endpoint, "
        "a realtime GPU endpoint, Rekognition Custom Labels and Vertex AI AutoML, and per training run on demand "
        "and on spot. Inputs: the deployment configuration (cdk.json, -c overrides), the latency benchmark's "
        "result file and a dated prices file; the output says where each came from.",
    )
    parser.add_argument("--per-month", type=int, default=10_000, metavar="N",
                        help="X-rays predicted a month (default: 10,000)")
    parser.add_argument("--prices", type=Path, metavar="FILE",
                        help="prices overriding cxr/prices.json's (same shape, any subset)")
    parser.add_argument("--latency", type=Path, default=LATENCY_FILE, metavar="FILE",
                        help="bench/latency.py --json result (default: bench/results/latency.json)")
    hours = parser.add_mutually_exclusive_group()
    hours.add_argument("--training-hours", type=float, metavar="H",
                       help="hours one training run takes (default: the configured maximum runtime, an upper bound)")
    hours.add_argument("--training-job", metavar="NAME",
                       help="take the hours, instance type and spot saving from this finished training job of the "
                       "deployment (--stage/--region/--profile, or --local)")
    target.add_arguments(parser)
    deployment.add_context_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)


def run(args) -> int:
    if args.per_month < 1:
        raise UsageError("--per-month must be at least 1")
    if args.training_hours is not None and args.training_hours <= 0:
        raise UsageError("--training-hours must be positive")
    overrides = deployment.parse_context(args.context)
    config = deployment.project_config(overrides)
    prices = costs.load_prices(args.prices)
    latency = costs.Latency.from_file(args.latency)
    measured = measured_training(args) if args.training_job else None
    training_instance_type = config.training_instance_type
    if measured is not None:
        hours, training_instance_type = measured.training_s / 3600, measured.instance_type
        hours_source = f"training job {measured.name}"
        if args.local:
            hours_source += " on the offline cloud (this machine's CPU, not the instance)"
    elif args.training_hours is not None:
        hours, hours_source = args.training_hours, "--training-hours"
    else:
        hours = config.training_max_runtime_s / 3600
        hours_source = "training_max_runtime_s in the configuration: the job's limit, an upper bound"
    inputs = costs.Inputs(
        per_month=args.per_month,
        endpoint_mode=config.endpoint_mode,
        serverless_memory_mb=config.serverless_memory_mb,
        endpoint_instance_type=config.endpoint_instance_type,
        training_instance_type=training_instance_type,
        training_hours=hours,
        training_spot=config.training_spot,
        lambda_memory_mb=wiring.PREDICT.memory_mb,
        lambda_architecture=config.lambda_architecture,
        latency=latency,
    )
    serving = costs.serving_estimates(prices, inputs)
    training = costs.training_cost(prices, inputs)
    sources = {
        "configuration": "cdk.json context.cxr" + (f" with -c {', '.join(sorted(overrides))}" if overrides else ""),
        "latency": latency.source,
        "training_hours": hours_source,
        "predict_lambda": f"{wiring.PREDICT.memory_mb} MB (infra/wiring.py), {config.lambda_architecture}",
        "prices": str(args.prices) + " over cxr/prices.json" if args.prices else "cxr/prices.json",
    }
    if measured is not None and measured.spot_saving is not None:
        sources["measured_spot_saving"] = f"{measured.spot_saving:.0%} on {measured.name} (1 - billable / training s)"
    if args.json:
        json.dump({
            "per_month": args.per_month,
            "currency": "USD",
            "serving": [asdict(e) for e in serving],
            "training": asdict(training),
            "inputs": asdict(inputs),
            "sources": sources,
            "not_counted": list(costs.NOT_COUNTED),
            "prices": {name: asdict(prices[name]) for name in sorted(costs.price_names(inputs))},
        }, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print_report(serving, training, inputs, sources, prices)
    return 0


def measured_training(args) -> costs.MeasuredTraining:
    tgt = target.resolve(args)
    try:
        job = tgt.client("sagemaker").describe_training_job(TrainingJobName=args.training_job)
    except ClientError as exc:
        raise UserError(f"training job {args.training_job} not found in {tgt.region}: "
                        f"{exc.response['Error'].get('Message', exc)}") from None
    return costs.MeasuredTraining.from_description(job)


def money(value: float) -> str:
    """Whole dollars for large sums, cents for ordinary ones, three significant figures below a dollar."""
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:,.2f}"
    return f"{value:.3g}"


def print_report(serving: list[costs.Estimate], training: costs.TrainingCost, inputs: costs.Inputs,
                 sources: dict[str, str], prices: dict[str, costs.Price]) -> None:
    width = max(len(e.name) for e in serving)
    print(f"Serving {inputs.per_month:,} X-rays a month (USD)\n")
    print(f"  {'option':<{width}}  {'per 1,000':>10}  {'per month':>10}  basis")
    for e in serving:
        mark = "*" if e.configured else " "
        print(f"{mark} {e.name:<{width}}  {money(e.per_1000):>10}  {money(e.per_month):>10}  {e.basis}")
    print(f"* the configured endpoint_mode ({inputs.endpoint_mode})")
    ours = serving[0]
    items = ", ".join(f"{name} {money(value * 1000)}" for name, value in ours.items.items())
    print(f"\n{ours.name}, per 1,000: {items}")
    print(f"\nTraining run on {training.instance_type}, {training.hours:.3g} h (USD)")
    for label, value in (("on demand", training.on_demand), ("spot", training.spot)):
        configured = "  <- configured (training_spot)" if label == training.configured else ""
        print(f"  {label:<10} {money(value):>8}{configured}")
    print(f"  spot saving {training.spot_saving:.0%}: {prices['sagemaker_spot_saving'].note or ''}".rstrip())
    print("\nNot counted: " + "; ".join(costs.NOT_COUNTED))
    print("\nInputs")
    for name, text in sources.items():
        print(f"  {name}: {text}")
    print("\nPrices (value, unit, as of, source)")
    for name in sorted(costs.price_names(inputs)):
        p = prices[name]
        print(f"  {name}: {p.value:g} {p.unit}; {p.as_of}; {p.source}")

