"""The approved model run inside the predict function (``endpoint_mode=lambda``): no SageMaker endpoint.

The model served is the stage's champion in the SageMaker Model Registry, the approved package approved
last (:func:`lambdas.domain.promotion.champion_of`, the rule the pipeline deploys by and ``cxr models
rollback`` reverses), looked up at most once a minute. What is loaded, once per execution environment (and
again only when the champion changes), is the artifact's lean serving copy that the Evaluate step wrote
(``lambdas.domain.serving_copy``: the served ONNX file, ``model.json``, the guard and the handler's ``.py``
files, about a tenth of the artifact unpacked), checked against the SHA-256 the package records. A package registered
before serving copies existed has its ``model.tar.gz`` streamed instead, checked against its registered digest,
with only what the handler needs written to ``/tmp``: never ``code/lib`` (the endpoint image's packages, built
for another Python), the torch weights or the report. Either way the prediction's ``artifact_sha256`` is the
registered ``model.tar.gz``'s, whose members the copy holds byte for byte. The artifact's own
``code/inference.py`` then answers exactly as the endpoint would, from the pixels the predict function has
already decoded (one decode per prediction); ONNX Runtime comes from the function's layer
(``infra/bundling.py``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from lambdas import aws
from lambdas.domain import audit, imaging, layout, promotion, threshold_amendment

MODEL_PACKAGE_GROUP_VARIABLE = "MODEL_PACKAGE_GROUP"
"""The stage's model package group (``infra.wiring.ENV_MODEL_PACKAGE_GROUP``)."""
REGISTRY_CACHE_SECONDS = 60
"""How long a looked-up champion is trusted: a promotion or rollback serves within a minute, as with an endpoint."""
SKIPPED = ("code/lib/", "model.pt", "report/")
"""Artifact members the Lambda never writes: the endpoint image's packages, the torch weights, the report."""
WORK = Path(tempfile.gettempdir()) / "cxr-served-model"


class NoApprovedModel(RuntimeError):
    """The stage's group has no approved package yet: retried, then dead-lettered, as an endpoint not yet made."""


class ArtifactDigestMismatch(RuntimeError):
    """The artifact's bytes are not the ones the registry recorded: nothing is served from them."""


class ThresholdNotServable(RuntimeError):
    """The package adopts a threshold its artifact's handler cannot put in force: nothing is served from it."""


@dataclass
class Served:
    package_arn: str
    artifact: str
    artifact_sha256: str | None
    handler: ModuleType
    model: object

    @property
    def name(self) -> str:
        """What the prediction record names as its ``endpoint``."""
        return f"lambda:{self.package_arn}"

    def predict(self, image: imaging.NormalisedImage, explain: bool) -> dict:
        """The endpoint's answer for an image the predict function normalised: ``predict_fn`` on its pixels."""
        return self.handler.predict_fn(self.handler.Request(image, explain), self.model)

    def answer(self, image: imaging.NormalisedImage, explain: bool) -> bytes:
        """The endpoint's JSON body for an image already normalised."""
        body, _ = self.handler.output_fn(self.predict(image, explain), "application/json")
        return body.encode()

    def refusal(self, error: str) -> bytes:
        """The answer to an input the model cannot take, as a Batch Transform job's container writes it
        (``predict_fn`` on the handler's ``Refused``: the status, the error, the model and its digest)."""
        body, _ = self.handler.output_fn(self.handler.predict_fn(self.handler.Refused(error), self.model),
                                         "application/json")
        return body.encode()


_lock = threading.Lock()
_served: Served | None = None
_checked_at = float("-inf")


def answer(image: imaging.NormalisedImage, explain: bool) -> tuple[bytes, str, float]:
    """The champion's answer as the endpoint's JSON body, what the record names as its endpoint, and the ms taken."""
    served = current(os.environ[MODEL_PACKAGE_GROUP_VARIABLE])
    started = time.perf_counter()
    body = served.answer(image, explain)
    return body, served.name, round(1000 * (time.perf_counter() - started), 1)


def current(group: str) -> Served:
    """The champion, loaded; looked up in the registry at most every ``REGISTRY_CACHE_SECONDS``."""
    global _served, _checked_at
    with _lock:
        if _served is not None and time.monotonic() - _checked_at < REGISTRY_CACHE_SECONDS:
            return _served
        package = champion(group)
        if _served is None or _served.package_arn != package["ModelPackageArn"]:
            _served = _load_package(package)
        _checked_at = time.monotonic()
        return _served


def package(package_arn: str) -> Served:
    """One registered package, loaded (the re-score after a promotion names the package it approved, where the
    champion may still be cached as the previous one for up to ``REGISTRY_CACHE_SECONDS``)."""
    global _served, _checked_at
    with _lock:
        if _served is None or _served.package_arn != package_arn:
            _served = _load_package(aws.client("sagemaker").describe_model_package(ModelPackageName=package_arn))
            _checked_at = float("-inf")  # not looked up as the champion: a champion lookup loads its own
        return _served


def _load_package(package: dict) -> Served:
    """The package's serving copy (or, registered before copies, its artifact), checked against its digest."""
    container = package["InferenceSpecification"]["Containers"][0]
    metadata = package.get("CustomerMetadataProperties", {})
    serving = (metadata[promotion.SERVING_ARTIFACT], metadata[promotion.SERVING_SHA256]) if (
        promotion.SERVING_ARTIFACT in metadata) else None
    environment = container.get("Environment", {})
    return load(package["ModelPackageArn"], container["ModelDataUrl"],
                environment.get(audit.ARTIFACT_SHA256_VARIABLE), serving,
                environment.get(threshold_amendment.THRESHOLD_VARIABLE))


def champion(group: str) -> dict:
    """The group's approved package approved last, described (ListModelPackages summaries carry no metadata)."""
    sagemaker = aws.client("sagemaker")
    arns = [summary["ModelPackageArn"]
            for page in sagemaker.get_paginator("list_model_packages").paginate(
                ModelPackageGroupName=group, ModelApprovalStatus=promotion.APPROVED)
            for summary in page["ModelPackageSummaryList"]]
    package = promotion.champion_of([sagemaker.describe_model_package(ModelPackageName=arn) for arn in arns])
    if package is None:
        raise NoApprovedModel(f"no approved model in {group}: train one (`cxr train`) or promote one")
    return package


def load(package_arn: str, artifact: str, digest: str | None, serving: tuple[str, str] | None = None,
         threshold: str | None = None) -> Served:
    """Write the serving copy (``serving``: its URI and SHA-256) into ``/tmp``, or without one the artifact's
    handler files, each checked against its digest; import the handler and load the model, at the package's
    adopted ``threshold`` if it has one (put in force by the artifact's own ``decision.adopt_threshold``, as
    the endpoint's container does from its environment)."""
    model_dir = WORK / hashlib.sha256(artifact.encode()).hexdigest()[:16]
    shutil.rmtree(WORK, ignore_errors=True)  # the previous champion's files: /tmp is 512 MB by default
    model_dir.mkdir(parents=True)
    uri, expected = serving or (artifact, digest)
    bucket, key = layout.split_s3_uri(uri)
    body = aws.client("s3").get_object(Bucket=bucket, Key=key)["Body"]
    stream = audit.DigestingReader(body)
    with tarfile.open(fileobj=stream, mode="r|" if serving else "r|gz") as archive:
        for member in archive:
            name = member.name.removeprefix("./")
            if member.isfile() and (serving or not name.startswith(SKIPPED)):
                archive.extract(member, model_dir, filter="data")
    found = stream.drain()  # the rest of the stream (tar padding, gzip trailer): the digest covers every byte
    if expected and found != expected:
        shutil.rmtree(model_dir, ignore_errors=True)
        raise ArtifactDigestMismatch(f"{uri} has SHA-256 {found}, the registry records {expected}")
    handler = _import_handler(model_dir / "code", found)
    model = handler.model_fn(str(model_dir))
    if threshold:
        adopt = getattr(handler.decision, "adopt_threshold", None)
        if adopt is None:
            raise ThresholdNotServable(f"{package_arn} adopts threshold {threshold}, but its artifact's handler "
                                       "predates adopted thresholds: retrain, then adopt again")
        model.config = adopt(model.config, threshold)
    model.artifact_sha256 = digest or found
    return Served(package_arn, artifact, model.artifact_sha256, handler, model)


def _import_handler(code_dir: Path, digest: str) -> ModuleType:
    """The artifact's ``inference.py``, its flat siblings (``imaging``, ``decision``, ``ood``) importable: a
    previous champion's are forgotten first, so that the new handler imports its own."""
    sys.path[:] = [entry for entry in sys.path if not Path(entry).is_relative_to(WORK)]
    for name, module in list(sys.modules.items()):
        if Path(getattr(module, "__file__", None) or "/").is_relative_to(WORK):
            del sys.modules[name]
    sys.path.insert(0, str(code_dir))
    spec = importlib.util.spec_from_file_location(f"cxr_served_{digest[:16]}", code_dir / "inference.py")
    handler = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = handler  # dataclasses look their module up while the module runs
    spec.loader.exec_module(handler)
    return handler
