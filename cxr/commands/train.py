"""`cxr train`: start the training state machine and follow it state by state; metrics and gate at the end."""

from __future__ import annotations

import json
import time
from pathlib import Path

from cxr import operations, presets, target
from cxr.arguments import key_values


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="run the training pipeline on an uploaded dataset",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="the name used with `cxr upload-dataset`")
    parser.add_argument("--run-id", default=None, help="default: <dataset>-<UTC time>")
    parser.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE",
                        help="training hyperparameter, e.g. --hp epochs=20 (repeatable; see train.py --help)")
    parser.add_argument("--preset", choices=sorted(presets.PRESETS),
                        help="a named recipe (cxr/presets.py; `gpu` for a GPU training instance); --hp wins over it")
    target.add_arguments(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    hyperparameters = presets.expand(args.preset, key_values(args.hp, "--hp"))
    deployment = target.resolve(args)
    sfn = deployment.client("stepfunctions")
    run_id = args.run_id or time.strftime(f"{args.dataset}-%Y%m%d-%H%M%S", time.gmtime())
    jobs = target.LOCAL_DIR / "work" / "training-jobs" if deployment.is_local else None
    outcome = start_and_follow(Progress(), sfn, deployment.state_machine_arn(), run_id, args.dataset,
                               hyperparameters, jobs)
    print_outcome(outcome)
    return 0 if outcome["deployed"] else 1


class Progress:
    """Timestamped progress lines."""

    def __init__(self):
        self.started = time.perf_counter()

    def __call__(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.started:6.1f}s] {message}", flush=True)


class TrainingLogTail:
    """Shows a local training job's per-epoch lines while the Train state runs (offline cloud only)."""

    def __init__(self, say, jobs_dir: Path | None):
        self.say, self.jobs_dir, self.offsets = say, jobs_dir, {}

    def __call__(self) -> None:
        if self.jobs_dir is None:
            return
        for log in sorted(self.jobs_dir.glob("*/train.log")):
            with log.open() as handle:
                handle.seek(self.offsets.get(log, 0))
                lines = handle.readlines()
                self.offsets[log] = handle.tell()
            for line in lines:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and "epoch" in record:
                    self.say(f"    epoch {record['epoch']}: " + ", ".join(
                        f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in record.items() if k != "epoch"))


def start_and_follow(say, sfn, state_machine_arn: str, run_id: str, dataset: str, hyperparameters: dict,
                     jobs_dir: Path | None) -> dict:
    """Start a pipeline run and print its states as they happen; returns status, output and gate verdict."""
    request = {"run_id": run_id, "dataset": dataset, "hyperparameters": hyperparameters}
    say(f"starting the training pipeline, run {run_id}: {json.dumps(hyperparameters)}")
    arn = sfn.start_execution(stateMachineArn=state_machine_arn, name=run_id, input=json.dumps(request))[
        "executionArn"]
    for event in operations.follow_execution(sfn, arn, on_poll=TrainingLogTail(say, jobs_dir)):
        entered = event.get("stateEnteredEventDetails")
        if entered:
            say(f"  state {entered['name']}")
        for kind in ("taskFailedEventDetails", "lambdaFunctionFailedEventDetails", "executionFailedEventDetails"):
            if kind in event:
                say(f"  {event['type']}: {event[kind].get('error')} {event[kind].get('cause', '')[:300]}")
    described = sfn.describe_execution(executionArn=arn)
    output = json.loads(described.get("output") or "{}")
    rule = output.get("evaluation", {}).get("decision_rule")
    if rule:
        say(f"  gate: the model's decision rule: {'pass' if rule['passed'] else 'FAIL: ' + rule['problem']}")
    for check in output.get("evaluation", {}).get("checks", []):
        value = "missing" if check["value"] is None else f"{check['value']:.3f}"
        say(f"  gate: {check['metric']} {value} >= {check['minimum']:.2f}: {'pass' if check['passed'] else 'FAIL'}")
    registration = output.get("registration")
    if registration:
        say(f"  registry: v{registration['version']} {registration['status']} ({registration['decision']}): "
            f"{registration['reason']}")
        for name, stats in registration.get("statistics", {}).items():
            if stats.get("interval"):
                low, high = stats["interval"]
                say(f"  champion gate: {name} challenger - champion {stats['difference']:+.4f} "
                    f"[{low:+.4f}, {high:+.4f}]: {'pass' if stats['passed'] else 'FAIL'}")
    return {"status": described["status"], "output": output, "cause": described.get("cause", ""),
            "deployed": deployed(described["status"], output)}


def deployed(status: str, output: dict) -> bool:
    """A new model serves: an endpoint took it, or (``endpoint_mode=lambda``, no Deploy step) the registry approved."""
    approved = bool((output.get("registration") or {}).get("approved"))
    return status == "SUCCEEDED" and ("deployment" in output or approved)


def print_outcome(outcome: dict) -> None:
    output = outcome["output"]
    if outcome["deployed"] and "deployment" not in output:
        print(f"model v{output['registration']['version']} approved: the predict function serves it "
              "(endpoint_mode=lambda, no endpoint)")
    elif outcome["deployed"]:
        deployment = output["deployment"]
        print(f"deployed model {deployment['model_name']} to endpoint {deployment['endpoint_name']}")
    elif outcome["status"] == "SUCCEEDED":
        reason = output.get("registration", {}).get("reason") or "; ".join(
            output.get("evaluation", {}).get("failures", []))
        print(f"the model was not approved and not deployed; the previous endpoint keeps serving: {reason}")
    else:
        print(f"the pipeline {outcome['status'].lower()}: {outcome['cause']}")
