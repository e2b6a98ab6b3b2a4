"""`cxr fsck --dataset NAME [--repair]`: every raw key whose current state is missing, stale or duplicated.

Compares three things that ingest keeps in step (see ``lambdas/domain/source_state.py``): the
current version of each ``raw/<dataset>/`` key, its record in the source-state table, and the
outputs under ``processed/<dataset>/`` and ``quarantine/raw/<dataset>/``. ``--repair`` tombstones
outputs no record owns (a delete marker: every version stays), then re-drives each damaged key
through the preprocess function itself, with an S3 event that carries no sequencer (so it orders
nothing and only asks for the key to be derived again), and checks again. It is how an operator
recovers after an outage or a lost table; run it while uploads are quiet, and once more to confirm.
Exit status: 0 consistent, 1 damage found (or left after --repair).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

from botocore.exceptions import ClientError

from cxr import source_names, target
from cxr.errors import UserError
from cxr.local import s3_events
from infra import wiring
from lambdas.domain import layout, source_state
from lambdas.domain.source_state import Finding
from lambdas.state_store import StateStore

REPAIR_BATCH = 25
"""Records per repair invocation: well inside the function's timeout for full-size X-rays."""


def register(subparsers) -> None:
    parser = subparsers.add_parser("fsck", help="check (and --repair) that ingest's state matches the uploads",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="the dataset under raw/")
    parser.add_argument("--repair", action="store_true", help="tombstone stray outputs and re-drive damaged keys")
    parser.add_argument("--json", action="store_true")
    target.add_arguments(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    deployment = target.resolve(args)
    ingest = Ingest.of(deployment)
    findings = ingest.check(args.dataset)
    report = {"dataset": args.dataset, "findings": [vars(f) for f in findings]}
    if args.repair and findings:
        report["repaired"] = ingest.repair(findings)
        findings = ingest.check(args.dataset)
        report["after_repair"] = [vars(f) for f in findings]
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_report(report)
    return 1 if findings else 0


class Ingest:
    """The deployment's data bucket, source-state table and preprocess function."""

    def __init__(self, s3, bucket: str, store: StateStore, name_of: Callable[[str], str], functions=None,
                 function: str | None = None):
        self.s3, self.bucket, self.store, self.name_of = s3, bucket, store, name_of
        self.functions, self.function = functions, function
        """The Lambda client and the preprocess function's name, which ``repair`` invokes."""
        self.current: dict[str, str | None] = {}
        self.keys: dict[str, str] = {}
        """Name -> raw key, for the keys listed (records and outputs name uploads, never key them)."""
        self.strays: dict[str, str | None] = {}
        """Outputs no record owns -> the raw key each names (None when nothing says)."""

    @classmethod
    def of(cls, deployment: target.Target) -> Ingest:
        functions, function = deployment.client("lambda"), preprocess_function(deployment)
        environment = functions.get_function_configuration(FunctionName=function)["Environment"]["Variables"]
        bucket = deployment.bucket(wiring.DATA)
        return cls(deployment.client("s3"), bucket,
                   StateStore(environment[wiring.ENV_SOURCE_STATE_TABLE], client=deployment.client("dynamodb")),
                   source_names.namer(deployment.client("secretsmanager"), deployment.stage, bucket),
                   functions, function)

    def check(self, dataset: str) -> list[Finding]:
        self.current = dict(self._current_versions(f"{layout.RAW}{dataset}/"))
        self.keys = {self.name_of(key): key for key in self.current}
        partition = source_state.dataset_partition(self.bucket, dataset)
        records = {self._key(r["source"]["name"]): source_state.checked(r) for r in self.store.records(partition)}
        present = {*self._listed(f"{layout.PROCESSED}{dataset}/"),
                   *self._listed(f"{layout.QUARANTINE}{layout.RAW}{dataset}/")}
        owned = {name for record in records.values() for name in record.outputs}
        self.strays = {name: self._source_of(name, present - owned) for name in sorted(present - owned)}
        return source_state.check_dataset(self.current, records, present, self.strays)

    def repair(self, findings: list[Finding]) -> dict:
        """Tombstone what no record owns, then derive every damaged raw key again through the function."""
        for name in self.strays:
            self.s3.delete_object(Bucket=self.bucket, Key=name)
        keys = sorted({f.key for f in findings if f.key.startswith(layout.RAW)})
        for start in range(0, len(keys), REPAIR_BATCH):
            event = s3_events.event(*(repair_record(self.bucket, key, self.current.get(key))
                                      for key in keys[start:start + REPAIR_BATCH]))
            response = self.functions.invoke(FunctionName=self.function, Payload=json.dumps(event).encode())
            if response.get("FunctionError"):
                raise UserError(f"the preprocess function failed: {response['Payload'].read().decode()[:500]}")
        return {"tombstoned": sorted(self.strays), "rederived": keys}

    def _current_versions(self, prefix: str) -> Iterator[tuple[str, str | None]]:
        """(key, current version id, or None when the newest is a delete marker) for every key under ``prefix``."""
        for page in self.s3.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=prefix):
            for version in page.get("Versions", []):
                if version["IsLatest"] and not version["Key"].endswith("/"):
                    yield version["Key"], version["VersionId"]
            for marker in page.get("DeleteMarkers", []):
                if marker["IsLatest"]:
                    yield marker["Key"], None

    def _listed(self, prefix: str) -> Iterator[str]:
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            yield from (o["Key"] for o in page.get("Contents", []))

    def _key(self, name: str) -> str:
        """The raw key of a name, when a listed key has it (else the name: a key with no version left)."""
        return self.keys.get(name, name)

    def _source_of(self, name: str, strays: set[str]) -> str | None:
        """The raw key a stray output belongs to: from its name (quarantine) or its sidecar (processed)."""
        if name.startswith(layout.QUARANTINE):
            return self._key(layout.file_name(name).removesuffix(layout.ERROR_SUFFIX))
        sidecar = name.rsplit(".", 1)[0] + ".json"
        if sidecar not in strays:
            return None
        try:
            source = json.loads(self.s3.get_object(Bucket=self.bucket, Key=sidecar)["Body"].read())["source"]
            return self._key(source["name"])
        except (ClientError, ValueError, KeyError):
            return None


def repair_record(bucket: str, key: str, version_id: str | None) -> dict:
    """An S3 event record for the key's current version, without a sequencer: "derive this key again"."""
    record = s3_events.object_created_record(
        bucket, key, 0, version_id=version_id,
        event_name="ObjectCreated:Put" if version_id else "ObjectRemoved:DeleteMarkerCreated")
    del record["s3"]["object"]["sequencer"]
    return record


def preprocess_function(deployment: target.Target) -> str:
    """The preprocess function's name: by its local name on the offline cloud, from CloudFormation on AWS."""
    return deployment.function_name(wiring.PREPROCESS, "Ingest")


def print_report(report: dict) -> None:
    findings = report["findings"]
    print(f"raw/{report['dataset']}/: {len(findings)} problem(s)" if findings else
          f"raw/{report['dataset']}/: consistent")
    for finding in findings:
        print(f"  {finding['problem']:<10} {finding['key']}  {finding['detail']}")
    if "repaired" in report:
        repaired = report["repaired"]
        print(f"repair: {len(repaired['tombstoned'])} stray output(s) tombstoned, "
              f"{len(repaired['rederived'])} key(s) derived again")
        after = report["after_repair"]
        print("after repair: consistent" if not after else f"after repair: {len(after)} problem(s) left (run again)")
        for finding in after:
            print(f"  {finding['problem']:<10} {finding['key']}  {finding['detail']}")
