"""1,000 random histories each for ingest and predictions (the property tests', ten times over), timed.

Run: `.venv/bin/python bench/ingest_histories.py [--histories N] [--seed S] [--json FILE]`.
Each history (a few uploads, overwrites and deletes of three keys, each event delivered one to three
times, in any order, some deliveries racing on two threads) is played against moto with the real
preprocess handler under ``raw/``, and again with the real predict handler under ``incoming/``, and
checked as ``tests/handlers/test_histories.py`` checks it: every key ends as its newest version alone
gives, PrepareDataset sees exactly the trainable set, outputs are exactly the current ones, no upload
is lost. Prints CPU and wall seconds per history.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
for name, value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_REGION": "us-east-1", "POWERTOOLS_METRICS_NAMESPACE": "CxrServerless",
                    "POWERTOOLS_LOG_LEVEL": "WARNING"}.items():
    os.environ[name] = value  # never reach AWS; the handlers' info logs would drown the figures
os.environ.pop("AWS_PROFILE", None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--histories", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="which 1,000: hypothesis draws them from this seed")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    import histories

    figures = {"histories": args.histories, "seed": args.seed}
    for name, replay in (("ingest", histories.IngestReplay), ("predict", histories.PredictReplay)):
        cpu, wall = timed(replay, args.histories, args.seed)
        figures[name] = {
            "played": len(cpu),
            "cpu_s_per_history": {"mean": round(statistics.mean(cpu), 3), "p95": round(_p95(cpu), 3),
                                  "max": round(max(cpu), 3)},
            "wall_s_per_history": {"mean": round(statistics.mean(wall), 3), "p95": round(_p95(wall), 3),
                                   "max": round(max(wall), 3)},
            "load_average_after": round(os.getloadavg()[0], 2),
        }
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


def timed(replay, count: int, first_seed: int) -> tuple[list[float], list[float]]:
    """Play ``count`` histories with ``replay``; CPU and wall seconds of each."""
    import contextlib
    import io

    from hypothesis import HealthCheck, given, seed, settings
    from moto import mock_aws

    import histories
    from lambdas import aws

    cpu, wall = [], []

    @seed(first_seed)
    @settings(max_examples=count, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(history=histories.histories())
    def play(history):
        started_cpu, started = time.process_time(), time.perf_counter()
        played = replay()
        played.play(history)
        played.check(history)
        cpu.append(time.process_time() - started_cpu)
        wall.append(time.perf_counter() - started)

    with mock_aws(), histories.atomic_dynamodb(), contextlib.redirect_stdout(io.StringIO()):  # the metrics' JSON
        aws.reset_clients()
        play()
    return cpu, wall


def _p95(values: list[float]) -> float:
    return sorted(values)[int(0.95 * (len(values) - 1))]


if __name__ == "__main__":
    main()
