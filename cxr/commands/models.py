"""`cxr models list | show ID | compare A B | promote ID | rollback | adopt-threshold T`: the stage's Model Registry.

Every training run registers a model package (``lambdas/register_model.py``); the approved package
approved last serves. ``promote`` approves a package (``approval=manual`` leaves passing models
pending) and deploys it; ``rollback`` rejects the serving package and redeploys the previous approved
one; ``compare`` runs the champion gate's paired bootstrap between two packages on their common
benchmark set. ``adopt-threshold`` registers the serving model (or ``--model``) at the threshold a site's review
verdicts call for (``cxr status`` prints it), as a package pending approval beside the paired test at that
threshold; ``promote`` then serves it. IDs are package versions, ARNs or run ids.
"""

from __future__ import annotations

import json

from cxr import target
from cxr.model_registry import ModelRegistry
from lambdas.domain import champion


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list, compare, promote and roll back registered models",
                                   description=__doc__.splitlines()[0])
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, help_text, args in (
        ("list", "every package of the stage's group, the serving one marked *", ()),
        ("show", "one package: its metadata, metrics and promotion decision", ("id",)),
        ("compare", "the paired bootstrap of B against A on their common benchmark set", ("a", "b")),
        ("promote", "approve a package and deploy it", ("id",)),
        ("rollback", "reject the serving package and redeploy the previous approved one", ()),
        ("adopt-threshold", "register the serving model at a site's threshold, pending approval", ("threshold",)),
    ):
        action = actions.add_parser(name, help=help_text)
        for arg in args:
            threshold = {"type": float, "help": "p(pneumonia), to 0.001"} if arg == "threshold" else {}
            action.add_argument(arg, **threshold)
        if name == "compare":
            action.add_argument("--margin", type=float, default=champion.DEFAULT_MARGIN)
        if name == "adopt-threshold":
            action.add_argument("--model", help="the package to amend (default: the serving one)")
        action.add_argument("--json", action="store_true")
        target.add_arguments(action)
        action.set_defaults(run=run)


def run(args) -> int:
    models = ModelRegistry.of(target.resolve(args))
    quiet = (lambda _: None) if args.json else print
    result = {
        "list": lambda: models.list(),
        "show": lambda: models.show(args.id),
        "compare": lambda: models.compare(args.a, args.b, args.margin),
        "promote": lambda: models.promote(args.id, quiet),
        "rollback": lambda: models.rollback(quiet),
        "adopt-threshold": lambda: models.adopt_threshold(args.threshold, args.model),
    }[args.action]()
    if args.json:
        print(json.dumps(result, indent=1, default=str))
    else:
        PRINTERS[args.action](result)
    return 0


def print_list(rows: list[dict]) -> None:
    if not rows:
        print("no registered models")
    for r in rows:
        print(f"{'*' if r['champion'] else ' '} v{r['version']:<3} {r['status']:<22} {r['decision'] or '-':<20} "
              f"run {r['run_id']}  dataset {r['dataset']}  benchmark {r['benchmark']}  "
              f"sha256 {(r['artifact_sha256'] or '-')[:12]}"
              + (f"  threshold {r['threshold']}" if r["threshold"] else ""))


def print_show(info: dict) -> None:
    print(f"v{info['version']} {info['status']}{' (serving)' if info['champion'] else ''}: {info['arn']}")
    for key, value in sorted(info["metadata"].items()):
        print(f"  {key:<24} {value}")
    print(f"  {'model data':<24} {info['model_data']}")
    binary = (info.get("metrics") or {}).get("binary", {})
    if binary:
        print("  binary: " + ", ".join(f"{k} {binary[k]:.4f}" for k in ("accuracy", "sensitivity", "specificity",
                                                                            "roc_auc") if binary.get(k) is not None))
    decision = info.get("promotion") or {}
    if decision:
        print(f"  decision: {decision['status']}: {decision['reason']}")
        print_statistics(decision.get("comparison"))


def print_statistics(comparison: dict | None) -> None:
    if not comparison:
        return
    print(f"  paired bootstrap over {comparison['patients']} patients ({comparison['images']} images), "
          f"{comparison['resamples']} resamples, margin {comparison['margin']}, "
          f"{comparison['confidence']:.0%} interval")
    for name, m in comparison["metrics"].items():
        if not m["measurable"]:
            print(f"    {name:<12} {m['note']}")
            continue
        print(f"    {name:<12} champion {m['champion']:.4f}  challenger {m['challenger']:.4f}  "
              f"difference {m['difference']:+.4f}  [{m['interval'][0]:+.4f}, {m['interval'][1]:+.4f}]  "
              f"{'pass' if m['passed'] else 'FAIL'}")


def print_compare(result: dict) -> None:
    print(f"v{result['b']['version']} against v{result['a']['version']} on benchmark set {result['benchmark']}: "
          f"{'not worse' if result['passed'] else 'worse'}")
    print_statistics(result)


def print_deployed(result: dict) -> None:
    print(f"v{result['version']} serves on {result['endpoint_name']} ({result['model_name']})")


def print_adopted(result: dict) -> None:
    record = result["promotion"] or {}
    print(f"v{result['version']} {result['status']} ({'registered' if result['created'] else 'already registered'}):"
          f" {record.get('reason', '')}")
    if record.get("comparison"):
        print("  on the benchmark set, champion: the model at its own threshold; challenger: at the adopted one")
    print_statistics(record.get("comparison"))
    print(f"  serve it with `cxr models promote {result['version']}`; `cxr models rollback` returns to the model's own")


PRINTERS = {"list": print_list, "show": print_show, "compare": print_compare, "promote": print_deployed,
            "rollback": print_deployed, "adopt-threshold": print_adopted}
