"""What `cxr models` does to a deployment: list, show and compare packages, promote one, roll back.

Promotion and rollback change the registry first (the approval status is the record of who should
serve: ``lambdas.domain.promotion``), then deploy through the pipeline's own Deploy and EndpointStatus
functions with the package's artifact, digest and model name, exactly as the state machine would, so
the same model names, tags, retirement and endpoint parameter follow.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cxr.errors import UserError
from infra import wiring
from lambdas import registry
from lambdas.domain import champion as paired_test
from lambdas.domain import layout, promotion, threshold_amendment

DEPLOY_ATTEMPTS = 40
"""How often a busy endpoint is waited for (30 s apart on AWS), as the state machine's EndpointBusy retry."""


@dataclass
class ModelRegistry:
    sagemaker: Any
    s3: Any
    lambda_client: Any
    group: str
    deploy_function: str
    status_function: str
    poll_seconds: float = 10.0

    @classmethod
    def of(cls, deployment) -> ModelRegistry:
        """For a :class:`cxr.target.Target` (AWS or the offline cloud)."""
        return cls(deployment.client("sagemaker"), deployment.client("s3"), deployment.client("lambda"),
                   wiring.model_package_group(deployment.stage),
                   deployment.function_name(wiring.DEPLOY_MODEL, "TrainingPipeline"),
                   deployment.function_name(wiring.ENDPOINT_STATUS, "TrainingPipeline"),
                   poll_seconds=0.2 if deployment.is_local else 10.0)

    # --- reading -------------------------------------------------------------------------------
    def packages(self) -> list[dict]:
        return registry.packages(self.group, self.sagemaker)

    def champion(self, packages: list[dict] | None = None) -> dict | None:
        return promotion.champion_of(self.packages() if packages is None else packages)

    def find(self, ident: str, packages: list[dict] | None = None) -> dict:
        """A package by version number, ARN or run id."""
        for package in self.packages() if packages is None else packages:
            meta = package.get("CustomerMetadataProperties", {})
            if ident in (str(package.get("ModelPackageVersion")), package["ModelPackageArn"],
                         meta.get(promotion.RUN_ID)):
                return package
        raise UserError(f"no model package {ident!r} in {self.group}: see `cxr models list`")

    def row(self, package: dict, serving: dict | None) -> dict:
        meta = package.get("CustomerMetadataProperties", {})
        return {"version": package.get("ModelPackageVersion"), "arn": package["ModelPackageArn"],
                "status": package.get("ModelApprovalStatus"),
                "champion": bool(serving and serving["ModelPackageArn"] == package["ModelPackageArn"]),
                "run_id": meta.get(promotion.RUN_ID), "dataset": meta.get(promotion.DATASET),
                "decision": meta.get(promotion.DECISION), "benchmark": meta.get(promotion.BENCHMARK_VERSION),
                "threshold": meta.get(threshold_amendment.THRESHOLD),
                "artifact_sha256": meta.get(promotion.ARTIFACT_SHA256),
                "created": str(package.get("CreationTime", "")), "approved_at": meta.get(promotion.APPROVED_AT),
                "description": package.get("ApprovalDescription") or package.get("ModelPackageDescription", "")}

    def list(self) -> list[dict]:
        packages = self.packages()
        serving = self.champion(packages)
        return [self.row(p, serving) for p in packages]

    def show(self, ident: str) -> dict:
        packages = self.packages()
        package = self.find(ident, packages)
        meta = package.get("CustomerMetadataProperties", {})
        report = meta.get(promotion.REPORT, "")
        promotion_record = (registry.read_json(f"{report.rstrip('/')}/{promotion.RECORD_FILE}", self.s3)
                            if report.startswith("s3://") else None)
        metrics_uri = package.get("ModelMetrics", {}).get("ModelQuality", {}).get("Statistics", {}).get("S3Uri")
        return {**self.row(package, self.champion(packages)), "metadata": meta,
                "model_data": package["InferenceSpecification"]["Containers"][0]["ModelDataUrl"],
                "metrics": registry.read_json(metrics_uri, self.s3), "promotion": promotion_record}

    def compare(self, a: str, b: str, margin: float = paired_test.DEFAULT_MARGIN) -> dict:
        """The paired test of B (challenger) against A (champion) on their common benchmark set."""
        packages = self.packages()
        first, second = self.find(a, packages), self.find(b, packages)
        answers = [registry.read_json(p.get("CustomerMetadataProperties", {}).get(promotion.BENCHMARK_ANSWERS),
                                      self.s3) for p in (first, second)]
        versions = [(x or {}).get("version") for x in answers]
        if not all(answers) or versions[0] != versions[1]:
            raise UserError(f"v{first.get('ModelPackageVersion')} and v{second.get('ModelPackageVersion')} have no "
                            f"answers on one benchmark set (sets: {versions[0] or 'none'}, {versions[1] or 'none'})")
        result = paired_test.compare(paired_test.pair(answers[0]["records"], answers[1]["records"]), margin=margin)
        return {"a": self.row(first, None), "b": self.row(second, None), "benchmark": versions[0], **result}

    # --- changing ------------------------------------------------------------------------------
    def adopt_threshold(self, threshold: float, ident: str | None = None) -> dict:
        """Register the serving (or the named) model at a site's threshold, pending a person's approval
        (``lambdas.domain.threshold_amendment``), with the paired test of its benchmark answers at that
        threshold against the trained package's; a second call with the same threshold finds the first's."""
        if not 0 < threshold < 1 or round(threshold, 3) != threshold:
            raise UserError(f"threshold {threshold}: give p(pneumonia) inside (0, 1) to 0.001, as `cxr status` "
                            "prints the site's")
        packages = self.packages()
        package = self.find(ident, packages) if ident else self.champion(packages)
        if package is None:
            raise UserError(f"no approved model in {self.group}: name the package to amend")
        meta = package.get("CustomerMetadataProperties", {})
        base = self.find(meta[threshold_amendment.AMENDS], packages) if threshold_amendment.AMENDS in meta else package
        base_meta = base["CustomerMetadataProperties"]
        metrics_uri = base.get("ModelMetrics", {}).get("ModelQuality", {}).get("Statistics", {}).get("S3Uri")
        measured = registry.read_json(metrics_uri, self.s3) or {}
        rule = measured.get("decision") or {}
        try:
            threshold_amendment.check(threshold, rule)
        except threshold_amendment.NotAdoptable as exc:
            raise UserError(f"v{base.get('ModelPackageVersion')}: {exc}") from None
        run = threshold_amendment.run_id(base_meta[promotion.RUN_ID], threshold)
        for found in packages:
            if found.get("CustomerMetadataProperties", {}).get(promotion.RUN_ID) == run:
                return {**self.row(found, None), "promotion": registry.read_json(
                    self._report(base, run, promotion.RECORD_FILE), self.s3), "created": False}
        answers = registry.read_json(base_meta.get(promotion.BENCHMARK_ANSWERS), self.s3)
        answers_uri, comparison, model_metrics = None, None, base["ModelMetrics"]
        if answers and answers.get("records"):
            amended = threshold_amendment.answers_at(answers, threshold)
            answers_uri = self._put(self._report(base, run, "benchmark.json"), amended)
            comparison = paired_test.compare(paired_test.pair(answers["records"], amended["records"]))
            if measured.get("model_id"):  # its own figures, at its threshold, under the id its answers give
                model_metrics = {"ModelQuality": {"Statistics": {"ContentType": "application/json", "S3Uri": self._put(
                    self._report(base, run, "metrics.json"),
                    threshold_amendment.figures(amended, measured["model_id"], threshold, rule))}}}
        reason = (f"threshold {threshold:.3f} adopted in place of v{base.get('ModelPackageVersion')}'s "
                  f"{rule['threshold']:.4g}: pending a person's approval (`cxr models promote`)"
                  + ("" if comparison else "; no benchmark answers to compare"))
        record = {"run_id": run, "status": promotion.PENDING, "approved": False,
                  "decision": threshold_amendment.DECISION, "reason": reason,
                  "champion": base["ModelPackageArn"], "comparison": comparison}
        self._put(self._report(base, run, promotion.RECORD_FILE), record)
        container = base["InferenceSpecification"]["Containers"][0]
        specification = {**{k: v for k, v in base["InferenceSpecification"].items() if k != "Containers"},
                         "Containers": [{"Image": container["Image"], "ModelDataUrl": container["ModelDataUrl"],
                                         "Environment": {**container.get("Environment", {}),
                                                         threshold_amendment.THRESHOLD_VARIABLE: str(threshold)}}]}
        arn = self.sagemaker.create_model_package(
            ModelPackageGroupName=self.group, ModelPackageDescription=reason[:promotion.MAX_DESCRIPTION],
            InferenceSpecification=specification, ModelMetrics=model_metrics,
            CustomerMetadataProperties=threshold_amendment.metadata(
                base_meta, threshold, rule["threshold"], self._report(base, run, ""), answers_uri),
            ModelApprovalStatus=promotion.PENDING,
            ClientToken=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.group}/{run}")))["ModelPackageArn"]
        created = self.sagemaker.describe_model_package(ModelPackageName=arn)
        return {**self.row(created, None), "promotion": record, "created": True}

    @staticmethod
    def _report(base: dict, run: str, name: str) -> str:
        """``reports/<run>/<name>`` in the bucket of the trained package's report."""
        bucket, _ = layout.split_s3_uri(base["CustomerMetadataProperties"][promotion.REPORT])
        return f"s3://{bucket}/{layout.report_key(run, name)}"

    def _put(self, uri: str, body: dict) -> str:
        bucket, key = layout.split_s3_uri(uri)
        self.s3.put_object(Bucket=bucket, Key=key, ContentType="application/json",
                           Body=json.dumps(body, indent=1).encode())
        return uri

    def promote(self, ident: str, log: Callable[[str], None] = print) -> dict:
        package = self.find(ident)
        registry.set_status(package["ModelPackageArn"], promotion.APPROVED, "promoted by `cxr models promote`",
                            self.sagemaker, **{promotion.DECISION: "promoted"})
        return self.deploy(package, log)

    def rollback(self, log: Callable[[str], None] = print) -> dict:
        packages = self.packages()
        current = self.champion(packages)
        if current is None:
            raise UserError(f"no approved model in {self.group}: nothing to roll back")
        previous = self.champion([p for p in packages if p["ModelPackageArn"] != current["ModelPackageArn"]])
        if previous is None:
            raise UserError(f"v{current.get('ModelPackageVersion')} is the only approved model: "
                            "nothing to roll back to")
        registry.set_status(current["ModelPackageArn"], promotion.REJECTED,
                            f"rolled back by `cxr models rollback` to v{previous.get('ModelPackageVersion')}",
                            self.sagemaker, **{promotion.DECISION: "rolled-back"})
        log(f"v{current.get('ModelPackageVersion')} rejected; deploying v{previous.get('ModelPackageVersion')}")
        return self.deploy(previous, log)

    def deploy(self, package: dict, log: Callable[[str], None] = print) -> dict:
        """Invoke the Deploy function with the package as the state machine would, then wait until it serves.

        With ``endpoint_mode=lambda`` (the Deploy function's environment says so) there is no endpoint: the
        predict function serves the champion within a minute of the registry change, so nothing is invoked."""
        meta = package.get("CustomerMetadataProperties", {})
        environment = self.lambda_client.get_function_configuration(
            FunctionName=self.deploy_function).get("Environment", {}).get("Variables", {})
        if environment.get(wiring.ENV_ENDPOINT_MODE) == "lambda":
            log(f"v{package.get('ModelPackageVersion')} is the champion: the predict function serves it "
                "within a minute (endpoint_mode=lambda, no endpoint)")
            return {"package": package["ModelPackageArn"], "version": package.get("ModelPackageVersion"),
                    "endpoint_name": "the predict function (endpoint_mode=lambda)",
                    "model_name": meta.get(promotion.TRAINING_JOB, "-"), "status": "Approved"}
        container = package["InferenceSpecification"]["Containers"][0]
        payload = {"run_id": meta.get(promotion.RUN_ID, "-"),
                   "model_name": meta.get(threshold_amendment.MODEL_NAME) or meta[promotion.TRAINING_JOB],
                   "model_artifact": container["ModelDataUrl"], "artifact_sha256": meta[promotion.ARTIFACT_SHA256],
                   "threshold": container.get("Environment", {}).get(threshold_amendment.THRESHOLD_VARIABLE)}
        deployment = self._invoke_until(self.deploy_function, payload, retry_on="EndpointBusy")
        log(f"deploying v{package.get('ModelPackageVersion')} ({deployment['model_name']}) to "
            f"{deployment['endpoint_name']}: {deployment['action']}")
        for _ in range(DEPLOY_ATTEMPTS * 10):
            status = self._invoke_until(self.status_function, deployment)
            if status.get("ready"):
                return {"package": package["ModelPackageArn"], "version": package.get("ModelPackageVersion"),
                        **deployment, "status": status["status"]}
            time.sleep(self.poll_seconds)
        raise UserError(f"{deployment['endpoint_name']} did not come into service; see `cxr status`")

    def _invoke_until(self, function: str, payload: dict, retry_on: str | None = None) -> dict:
        for _ in range(DEPLOY_ATTEMPTS):
            answer = self.lambda_client.invoke(FunctionName=function, Payload=json.dumps(payload).encode())
            body = json.loads(answer["Payload"].read() or b"null")
            if "FunctionError" not in answer:
                return body
            error = (body or {}).get("errorType", "")
            if error != retry_on:
                raise UserError(f"{function} failed: {error}: {(body or {}).get('errorMessage', '')}")
            time.sleep(self.poll_seconds * 3)
        raise UserError(f"{function}: the endpoint stayed busy")
