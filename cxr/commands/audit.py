"""`cxr audit KEY|HASH`: the full trail of one X-ray, from its uploads to the model, artifact and gate that judged it.

KEY is an object key (``incoming/...`` in the inference bucket, ``raw/...`` in the data bucket, or
``s3://bucket/key``); HASH is the SHA-256 of the normalised image's pixels (``content_hash`` in
every record, the same whatever file format or name carried the pixels). The trail lists:

* each upload of the key and its versions (delete markers included);
* what ingest made of a ``raw/`` upload (the processed image or the quarantine reason) and, for a hash,
  every training-data upload with those pixels;
* every prediction record (the DynamoDB item per version, the audit trail's source of truth) with its
  audit block, and the versions of ``predictions/<key>.json`` with their Object Lock retention;
* for each model that judged it: the SageMaker model (if not yet retired) with its artifact digest tag,
  and the training run whose gate report names the same digest, with the gate's verdict.

Records name uploads by the keys' opaque names (``lambdas/domain/source_names.py``): a KEY is turned
into its name with the deployment's pseudonym secret, and the trail shows a key only when it is the one
given; uploads found from a HASH are shown by name (their versions are read through the name's pointer).

It reads only, and works the same against AWS and the offline cloud (``--local``). Exit status 0 when
anything was found, 1 when nothing was.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

from botocore.exceptions import ClientError

from cxr import source_names, target
from cxr.errors import UsageError
from infra import wiring
from lambdas.domain import audit, layout, source_state
from lambdas.domain import source_names as names

HASH = re.compile(r"^[0-9a-f]{64}$")
GATE_REPORT = "gate.json"


def register(subparsers) -> None:
    parser = subparsers.add_parser("audit", help="the full trail of one X-ray: uploads, predictions, model, artifact",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("subject", metavar="KEY|HASH",
                        help="incoming/... or raw/... key (or s3://bucket/key), or an image's content hash")
    parser.add_argument("--json", action="store_true")
    target.add_arguments(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    trail = Trail.of(target.resolve(args)).collect(args.subject)
    if args.json:
        print(json.dumps(trail, indent=1, default=str))
    else:
        print_trail(trail)
    return 0 if trail["uploads"] or trail["predictions"] or trail["training_data"] else 1


class Trail:
    """The deployment's buckets, prediction records and source-state records, read for one X-ray."""

    def __init__(self, deployment: target.Target, predictions_table: str, state_table: str):
        self.deployment, self.predictions_table, self.state_table = deployment, predictions_table, state_table
        self.s3, self.dynamodb = deployment.client("s3"), deployment.client("dynamodb")
        self._namers: dict = {}

    @classmethod
    def of(cls, deployment: target.Target) -> Trail:
        """The tables as the predict function's environment names them (CloudFormation names them on AWS)."""
        function = deployment.function_name(wiring.PREDICT, "Inference")
        variables = deployment.client("lambda").get_function_configuration(
            FunctionName=function)["Environment"]["Variables"]
        return cls(deployment, variables[wiring.ENV_PREDICTIONS_TABLE], variables[wiring.ENV_SOURCE_STATE_TABLE])

    def collect(self, subject: str) -> dict:
        trail: dict = {"subject": subject, "uploads": [], "predictions": [], "training_data": [], "models": []}
        if HASH.match(subject):
            hashes = {subject}
            items = list(self._items_with_hash(subject))
            found = sorted({tuple(item["pk"]["S"].split("/", 1)) for item in items})
            uploads = (self._upload(bucket, name, layout.INCOMING) for bucket, name in found)
        else:
            bucket, key = self._locate(subject)
            name, hashes = self._name(bucket, key), set()
            items = list(self._items_of(bucket, name)) if key.startswith(layout.INCOMING) else []
            uploads = iter([self._upload(bucket, name, key, given=True)])
        trail["uploads"] = [u for u in uploads if u["versions"] or "ingest" in u or "outcome" in u]
        for upload in trail["uploads"]:
            image = (upload.get("ingest") or {}).get("image")
            if image:
                hashes.add(image["content_hash"])
        items.sort(key=lambda item: item.get("predicted_at", {}).get("S", ""))
        trail["predictions"] = [self._prediction(item) for item in items]
        hashes |= {p["audit"]["content_hash"] for p in trail["predictions"] if p["audit"].get("content_hash")}
        trail["content_hashes"] = sorted(hashes)
        trail["training_data"] = [entry for content_hash in sorted(hashes)
                                  for entry in self._training_data(content_hash)]
        judged = {(p["audit"].get("model_id") or p["model_id"], p["audit"].get("artifact_sha256", audit.UNKNOWN))
                  for p in trail["predictions"]}
        trail["models"] = [self._model(model_id, digest) for model_id, digest in sorted(judged)]
        return trail

    # --- uploads -----------------------------------------------------------------------------------------------
    def _locate(self, subject: str) -> tuple[str, str]:
        if subject.startswith("s3://"):
            return layout.split_s3_uri(subject)
        if subject.startswith(layout.RAW):
            return self.deployment.bucket(wiring.DATA), subject
        if subject.startswith(layout.INCOMING):
            return self.deployment.bucket(wiring.INFERENCE), subject
        raise UsageError(f"{subject!r} is neither a key under {layout.INCOMING} or {layout.RAW}, an s3:// URI, "
                         "nor a 64-digit content hash")

    def _name(self, bucket: str, key: str) -> str:
        if bucket not in self._namers:
            self._namers[bucket] = source_names.namer(self.deployment.client("secretsmanager"), self.deployment.stage,
                                                      bucket)
        return self._namers[bucket](key)

    def _upload(self, bucket: str, name: str, key: str, *, given: bool = False) -> dict:
        """An upload by name; ``key`` is the given key, or only its area (the key is then read from the name's
        pointer, to list its versions, and not shown)."""
        real = key if given else self._pointed(bucket, key, name)
        upload = {"bucket": bucket, "name": name, **({"key": key} if given else {}),
                  "versions": self._versions(bucket, real) if real else []}
        record = self._state_record(source_state.partition(bucket, real or key), name)
        if record is not None:
            upload["ingest" if key.startswith(layout.RAW) else "outcome"] = {
                name: record.get(name) for name in ("outcome", "reason", "message", "image") if record.get(name)}
        return upload

    def _versions(self, bucket: str, key: str, *, retention: bool = False) -> list[dict]:
        """Every version and delete marker of exactly ``key``, newest first."""
        found = []
        for page in self.s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=key):
            for kind in ("Versions", "DeleteMarkers"):
                for version in page.get(kind, []):
                    if version["Key"] != key:
                        continue
                    entry = {"version_id": version["VersionId"], "last_modified": version["LastModified"],
                             "latest": version["IsLatest"], "delete_marker": kind == "DeleteMarkers",
                             **({"size": version["Size"]} if "Size" in version else {})}
                    if retention and kind == "Versions":
                        entry |= self._retention(bucket, key, version["VersionId"])
                    found.append(entry)
        return sorted(found, key=lambda v: v["last_modified"], reverse=True)

    def _retention(self, bucket: str, key: str, version_id: str) -> dict:
        head = self.s3.head_object(Bucket=bucket, Key=key, VersionId=version_id)
        if "ObjectLockMode" not in head:
            return {"lock": None}
        return {"lock": head["ObjectLockMode"], "retain_until": head["ObjectLockRetainUntilDate"]}

    def _pointed(self, bucket: str, area: str, name: str) -> str | None:
        try:
            body = self.s3.get_object(Bucket=bucket, Key=names.pointer_key(area, name))["Body"]
        except ClientError:
            return None
        return body.read().decode()

    def _state_record(self, partition: str, name: str) -> dict | None:
        item = self.dynamodb.get_item(TableName=self.state_table, ConsistentRead=True, Key={
            "pk": {"S": partition}, "sk": {"S": source_state.source_sort_key(name)}},
        ).get("Item")
        return json.loads(item["record"]["S"]) if item and "record" in item else None

    def _training_data(self, content_hash: str) -> Iterator[dict]:
        """Uploads under ``raw/`` with these pixels: the groups of identical pixels ingest keeps, one per dataset.

        A scan of the source-state table filtered on the group's sort key: it has one item per upload and
        no index by hash, and an audit is rare next to ingest's writes, which an index would make dearer."""
        pages = self.dynamodb.get_paginator("scan").paginate(
            TableName=self.state_table, FilterExpression="sk = :group",
            ExpressionAttributeValues={":group": {"S": source_state.group_sort_key(content_hash)}})
        for page in pages:
            for item in page["Items"]:
                bucket = item["pk"]["S"].split("/", 1)[0]
                for attribute, claim in item.items():
                    if attribute.startswith(source_state.CLAIM_PREFIX):
                        name = attribute.removeprefix(source_state.CLAIM_PREFIX)
                        record = self._state_record(item["pk"]["S"], name) or {}
                        yield {"bucket": bucket, "name": name, "label": claim["M"]["label"]["S"],
                               "content_hash": content_hash, "outcome": record.get("outcome"),
                               "processed_key": (record.get("image") or {}).get("processed_key")}

    # --- predictions -------------------------------------------------------------------------------------------
    def _items_of(self, bucket: str, name: str) -> Iterator[dict]:
        yield from self._query(KeyConditionExpression="pk = :pk",
                               ExpressionAttributeValues={":pk": {"S": f"{bucket}/{name}"}})

    def _items_with_hash(self, content_hash: str) -> Iterator[dict]:
        index = wiring.CONTENT_HASH_INDEX
        yield from self._query(IndexName=index.name, KeyConditionExpression=f"{index.partition_key} = :hash",
                               ExpressionAttributeValues={":hash": {"S": content_hash}})

    def _query(self, **kwargs) -> Iterator[dict]:
        for page in self.dynamodb.get_paginator("query").paginate(TableName=self.predictions_table, **kwargs):
            yield from page["Items"]

    def _prediction(self, item: dict) -> dict:
        record = json.loads(item["record"]["S"])
        source = record["source"]
        return {
            "bucket": source["bucket"], "name": source["name"], "version_id": source.get("version_id"),
            "label": record["label"], "confidence": record["confidence"],
            "refer_to_radiologist": record.get("refer_to_radiologist"), "model_id": record["model_id"],
            "endpoint": record.get("endpoint"), "predicted_at": record["predicted_at"],
            "audit": record.get("audit") or {},
            "json": {"key": layout.prediction_key(source["name"]),
                     "versions": self._versions(source["bucket"], layout.prediction_key(source["name"]),
                                                retention=True)},
        }

    # --- models and runs ---------------------------------------------------------------------------------------
    def _model(self, model_id: str, digest: str) -> dict:
        model: dict = {"model_id": model_id, "artifact_sha256": digest, "sagemaker_model": None, "run": None}
        described = self._sagemaker_model(model_id, digest)
        run_id = None
        if described is not None:
            model["sagemaker_model"] = {"name": described["ModelName"],
                                        "model_data_url": described["PrimaryContainer"]["ModelDataUrl"],
                                        "artifact_sha256": described["tags"].get(audit.ARTIFACT_TAG)}
            run_id = described["tags"].get("run_id")
        model["run"] = self._run(run_id, digest)
        return model

    def _sagemaker_model(self, model_id: str, digest: str) -> dict | None:
        """The SageMaker model that served it: named ``model_id`` (the pipeline names models after their training
        job, as model.json does), else the stage's model tagged with the digest; None once retired (the endpoint
        status step keeps the serving model and the one before)."""
        sagemaker = self.deployment.client("sagemaker")
        names = [model_id] + [m["ModelName"] for page in sagemaker.get_paginator("list_models").paginate(
            NameContains=wiring.resource_prefix(self.deployment.stage)) for m in page["Models"]]
        for name in dict.fromkeys(names):
            try:
                described = sagemaker.describe_model(ModelName=name)
            except ClientError:
                continue
            tags = {t["Key"]: t["Value"] for t in sagemaker.list_tags(ResourceArn=described["ModelArn"])["Tags"]}
            if name == model_id or tags.get(audit.ARTIFACT_TAG) == digest:
                return {**described, "tags": tags}
        return None

    def _run(self, run_id: str | None, digest: str) -> dict | None:
        """The gate report of the run that made this artifact: by the model's tag, else by the digest it records."""
        bucket = self.deployment.bucket(wiring.DATA)
        candidates = [f"{layout.REPORTS}{run_id}/{GATE_REPORT}"] if run_id else self._gate_reports(bucket)
        for key in candidates:
            try:
                report = json.loads(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            except ClientError:
                continue
            if run_id or report.get("artifact_sha256") == digest:
                return {"run_id": report.get("run_id"), "report": f"s3://{bucket}/{key.rsplit('/', 1)[0]}/",
                        "model_artifact": report.get("model_artifact"), "passed": report.get("passed"),
                        "failures": report.get("failures", []), "artifact_sha256": report.get("artifact_sha256"),
                        "code_version": report.get("code_version"),
                        "digest_matches": report.get("artifact_sha256") == digest}
        return None

    def _gate_reports(self, bucket: str) -> Iterator[str]:
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=layout.REPORTS):
            for obj in page.get("Contents", []):
                if obj["Key"].endswith(f"/{GATE_REPORT}"):
                    yield obj["Key"]


def print_trail(trail: dict) -> None:
    print(f"audit of {trail['subject']}")
    print(f"content hash(es): {', '.join(trail['content_hashes']) or '-'}")
    for upload in trail["uploads"]:
        print(f"\nupload s3://{upload['bucket']}/{upload.get('key', upload['name'])}: {len(upload['versions'])} "
              "version(s)")
        for v in upload["versions"]:
            what = "delete marker" if v["delete_marker"] else f"{v.get('size', 0)} bytes"
            print(f"  {v['last_modified']}  {v['version_id']}  {what}{'  (current)' if v['latest'] else ''}")
        for name in ("ingest", "outcome"):
            if name in upload:
                state = upload[name]
                image = state.get("image") or {}
                print(f"  {name}: {state.get('outcome')}"
                      + (f" -> {image['processed_key']} (label {image.get('label')})" if image else "")
                      + (f" ({state['reason']}: {state.get('message')})" if state.get("reason") else ""))
    if trail["training_data"]:
        print("\nin the training data (same pixels):")
        for entry in trail["training_data"]:
            print(f"  {entry['name']} in {entry['bucket']}  label {entry['label']}  {entry['outcome']}"
                  + (f" -> {entry['processed_key']}" if entry["processed_key"] else ""))
    print(f"\npredictions: {len(trail['predictions'])}")
    for p in trail["predictions"]:
        trail_ = p["audit"]
        refer = {True: "referred", False: "not referred", None: "-"}[p["refer_to_radiologist"]]
        print(f"  {p['predicted_at']}  {p['name']} version {p['version_id']}: {p['label']} "
              f"({p['confidence']:.3f}), {refer}")
        print(f"    model {p['model_id']}  artifact sha256 {trail_.get('artifact_sha256', '-')}")
        print(f"    threshold {trail_.get('threshold')}  referral band {trail_.get('referral_band')}  "
              f"code {trail_.get('code_version', '-')}  content hash {trail_.get('content_hash', '-')}")
        for v in p["json"]["versions"]:
            lock = ("delete marker" if v["delete_marker"] else
                    f"locked ({v['lock']}) until {v['retain_until']}" if v.get("lock") else "not locked")
            print(f"    {p['json']['key']} {v['version_id']}: {lock}{'  (current)' if v['latest'] else ''}")
    for model in trail["models"]:
        print(f"\nmodel {model['model_id']}  artifact sha256 {model['artifact_sha256']}")
        sm = model["sagemaker_model"]
        print(f"  SageMaker model {sm['name']}: {sm['model_data_url']} (tagged sha256 {sm['artifact_sha256']})"
              if sm else "  SageMaker model: retired (no longer in SageMaker)")
        run = model["run"]
        if run is None:
            print("  training run: no gate report names this artifact")
            continue
        verdict = "passed" if run["passed"] else f"failed: {'; '.join(run['failures'])}"
        print(f"  training run {run['run_id']}: report {run['report']}, gate {verdict}")
        match = "matches" if run["digest_matches"] else "DOES NOT MATCH"
        print(f"  artifact {run['model_artifact']}, sha256 {run['artifact_sha256']} ({match} the prediction's), "
              f"code {run['code_version']}")
