"""Endpoint handler (SageMaker PyTorch inference toolkit): ``model_fn``, ``input_fn``, ``predict_fn``, ``output_fn``.

Serves ``model.onnx`` with ONNX Runtime, unpacked with its dependencies in ``code/lib`` for the image's
Python (``artifact.unpack_wheels``: endpoints have no internet, and the toolkit would pip-install a
``requirements.txt`` at every container start), and imports neither torch nor boto3, so a cold start is
ONNX Runtime's load and nothing more.
Every input goes through the one normaliser (``imaging.py``, shipped beside this file), then the
resize policy recorded in ``model.json``, exactly as at training time; logits become probabilities,
a label and the referral (``refer_to_radiologist`` with the ``referral_reasons`` that fired, the
``threshold`` and ``referral_band`` in force) through ``decision.py`` (also shipped here), the rule
every training figure used; a site's adopted threshold (``CXR_DECISION_THRESHOLD`` in the container's
environment, ``decision.adopt_threshold``) replaces the model's own at load, inside its referral band.

Each answer names the artifact that produced it: ``artifact_sha256`` is the packed archive's digest,
which the deploy step puts in the container's environment (``CXR_ARTIFACT_SHA256``), and every call
writes one JSON line to stdout (the endpoint's CloudWatch log group): content hash, model id, artifact
digest, label and referral, never the input itself or anything naming a patient.

Requests: ``image/png`` or ``image/jpeg`` bytes (raw uploads or the stored, preprocessed PNG), or
``application/json`` ``{"image": "<base64>", "explain": true}`` to also receive a class-activation
heat-map overlay showing where the model looked.

Artifacts with the ONNX ``features`` output and ``ood.npz`` also score how far the input lies from the
training X-rays (``ood.py``); one beyond the guard's threshold is referred with reason
``out_of_distribution``. Older artifacts (two outputs, no guard) answer ``"score": null``.

Response size: "The maximum request and response payload size for serverless invocations is 4 MB"
(SageMaker developer guide, "Invoke a serverless endpoint"); realtime ``InvokeEndpoint`` allows 6 MB and
an asynchronous endpoint writes its answer to S3. The overlay is drawn on the stored image, never more
than ``imaging.STORED_MAX_SIDE`` (256 px) a side whatever the upload (up to 60 MP), and saved as an
optimised PNG: at most 0.2 MB of RGB, 0.27 MB in base64, far inside the smallest of these limits (a
test sends the worst case: a maximal noisy upload).
"""

from __future__ import annotations

import base64
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

LIB = Path(__file__).resolve().parent / "lib"
"""The serving wheels unpacked (``artifact.LIB_DIR``), first on the path under the Python they were built for;
elsewhere (the offline cloud, ``cxr evaluate``, a Lambda) the environment provides the packages."""
if (LIB / "python-version.txt").is_file() and str(LIB) not in sys.path and (
        (LIB / "python-version.txt").read_text().strip() == f"{sys.version_info[0]}.{sys.version_info[1]}"):
    sys.path.insert(0, str(LIB))

import decision  # noqa: E402 (after the vendored path)
import imaging  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import ood  # noqa: E402
from PIL import Image  # noqa: E402

ARTIFACT_SHA256_VARIABLE = "CXR_ARTIFACT_SHA256"
"""Set by the deploy step (``lambdas.domain.audit``); absent when the model is served outside a deployment."""
IMAGE_TYPES = ("image/png", "image/jpeg", "image/jpg", "application/x-image", "application/octet-stream")
JSON_TYPE = "application/json"


try:  # the serving toolkit answers this class with its status code; anything else it answers with 500
    from sagemaker_inference.errors import BaseInferenceToolkitError
except ImportError:  # the offline cloud and `cxr evaluate` load this file without the toolkit

    class BaseInferenceToolkitError(Exception):
        def __init__(self, status_code: int, message: str, phrase: str):
            self.status_code, self.message, self.phrase = status_code, message, phrase
            super().__init__(status_code, message, phrase)


class BadRequest(BaseInferenceToolkitError, ValueError):
    """The request cannot be served (wrong content type, rejected image): HTTP 400, not a 500 crash.

    ``sagemaker_inference``'s transformer sets the status of a ``BaseInferenceToolkitError`` it catches
    (the reason phrase is ``phrase``, the body starts with ``message``); the runtime then reports
    ``ModelError`` "Received client error (400) from primary with message ...".
    """

    def __init__(self, message: str):
        super().__init__(400, message, message)

    def __str__(self) -> str:
        return self.message


@dataclass
class Model:
    session: ort.InferenceSession
    config: dict
    model_id: str
    artifact_sha256: str | None = None
    guard: ood.Guard | None = None

    @property
    def classes(self) -> list[str]:
        return self.config["classes"]


@dataclass
class Request:
    image: imaging.NormalisedImage
    explain: bool


def model_fn(model_dir: str, context=None) -> Model:
    model_dir = Path(model_dir)
    config = decision.adopt_threshold(json.loads((model_dir / "model.json").read_text()),
                                      os.environ.get(decision.THRESHOLD_VARIABLE))
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("CXR_ONNX_THREADS", "0"))  # 0: one per core
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(model_dir / config["onnx"]), options, providers=["CPUExecutionProvider"])
    outputs = [output.name for output in session.get_outputs()]
    described = config.get("out_of_distribution")
    guard = ood.load(model_dir / described["file"]) if described and "features" in outputs else None
    return Model(session, config, config.get("model_id", model_dir.name),
                 os.environ.get(ARTIFACT_SHA256_VARIABLE) or None, guard)


PER_RECORD_ERRORS_VARIABLE = "CXR_PER_RECORD_ERRORS"
"""``1`` in a Batch Transform job's environment (``cxr batch-predict``): a record the model cannot take is answered
with its error (``{"status": "rejected", "error": ...}``) instead of an HTTP error, because "If a batch transform
job fails to process an input file because of a problem with the dataset, SageMaker marks the job as failed"
(SageMaker Developer Guide, "Batch transform"): one bad X-ray must not lose the others' answers."""


@dataclass(frozen=True)
class Refused:
    """A batch record the model cannot take, and why."""

    error: str


def input_fn(body: bytes | str, content_type: str, context=None) -> Request | Refused:
    try:
        return _request(body, content_type)
    except BadRequest as exc:
        if os.environ.get(PER_RECORD_ERRORS_VARIABLE) == "1":
            return Refused(str(exc))
        raise


def _request(body: bytes | str, content_type: str) -> Request:
    kind = (content_type or "").split(";")[0].strip().lower()
    explain = False
    if kind == JSON_TYPE:
        try:
            request = json.loads(body)
            data = base64.b64decode(request["image"], validate=True)
        except (ValueError, KeyError, TypeError) as exc:
            raise BadRequest(f"expected JSON {{'image': '<base64>', 'explain': bool}}: {exc}") from None
        explain = bool(request.get("explain", False))
    elif kind in IMAGE_TYPES:
        data = body.encode() if isinstance(body, str) else bytes(body)
    else:
        raise BadRequest(f"unsupported content type {content_type!r}; send image/png, image/jpeg or application/json")
    try:
        return Request(imaging.normalise(data), explain)
    except imaging.RejectedImage as exc:
        raise BadRequest(f"{exc.code}: {exc.message}") from None


def model_input(image: Image.Image, config: dict) -> np.ndarray:
    return imaging.to_model_input(image, config["image_size"], config["resize_policy"],
                                  config.get("intensity", "linear"))[None, None]  # older models: linear


def predict_fn(request: Request | Refused, model: Model, context=None) -> dict:
    if isinstance(request, Refused):
        return {"status": "rejected", "error": request.error, "model_id": model.model_id,
                "artifact_sha256": model.artifact_sha256}
    started = time.perf_counter()
    config = model.config
    stored = request.image.stored  # decoded once, by the normaliser: the PNG is never made again here
    outputs = model.session.run(None, {"image": model_input(stored, config)})
    logits, cams = outputs[:2]
    probs = decision.model_probabilities(logits[0], config)
    classes = model.classes
    guard = out_of_distribution(model.guard, outputs[2][0] if len(outputs) > 2 else None)
    decided = decision.decide(probs, classes, config, out_of_distribution=guard["flagged"])
    result = {
        "label": decided.label,
        "confidence": decided.confidence,
        "probabilities": {c: float(p) for c, p in zip(classes, probs, strict=True)},
        "pneumonia_probability": (float(decision.pneumonia_probability(probs, classes))
                                  if decision.NORMAL in classes else None),
        "refer_to_radiologist": decided.refer,
        "referral_reasons": decided.reasons,
        "threshold": decided.threshold,
        "referral_band": decided.band,
        "model_id": model.model_id,
        "content_hash": request.image.content_hash,
        "artifact_sha256": model.artifact_sha256,
        "out_of_distribution": guard,
    }
    if request.explain:
        result["explanation"] = explanation(stored, cams[0, decided.index], config["resize_policy"])
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
    log_call(result)
    return result


def out_of_distribution(guard: ood.Guard | None, features: np.ndarray | None) -> dict:
    """The guard's verdict on one input's stage statistics; an artifact without a guard gives no score."""
    if guard is None or features is None:
        return {"score": None, "threshold": None, "flagged": False,
                "note": "this model artifact predates the out-of-distribution guard: no score"}
    score = float(guard.scores(features))
    return {"score": score, "threshold": guard.threshold, "flagged": score > guard.threshold}


def log_call(result: dict) -> None:
    """One structured line per call on stdout, which SageMaker sends to the endpoint's log group."""
    print(json.dumps({"event": "cxr.prediction", "content_hash": result["content_hash"],
                      "model_id": result["model_id"], "artifact_sha256": result["artifact_sha256"],
                      "label": result["label"], "refer_to_radiologist": result["refer_to_radiologist"],
                      "referral_reasons": result["referral_reasons"], "threshold": result["threshold"],
                      "referral_band": result["referral_band"]}, sort_keys=True), flush=True)


def output_fn(prediction: dict, accept: str | None, context=None) -> tuple[str, str]:
    kind = (accept or JSON_TYPE).split(";")[0].strip().lower()
    if kind not in (JSON_TYPE, "*/*", ""):
        raise BadRequest(f"unsupported accept type {accept!r}; only application/json is produced")
    return json.dumps(prediction), JSON_TYPE


def explanation(stored: Image.Image, cam: np.ndarray, policy: str) -> dict:
    """Class-activation heat map of the decided class, overlaid on the stored image."""
    heat = np.maximum(cam, 0)
    heat = heat / heat.max() if heat.max() > 0 else heat
    heat_image = Image.fromarray(np.uint8(heat * 255))
    width, height = stored.size
    if policy == "pad":  # the map covers the padded square: cut the image's own box out of it
        side = max(width, height)
        square = heat_image.resize((side, side), Image.Resampling.BILINEAR)
        left, top = (side - width) // 2, (side - height) // 2
        heat_image = square.crop((left, top, left + width, top + height))
    else:
        heat_image = heat_image.resize((width, height), Image.Resampling.BILINEAR)
    h = np.asarray(heat_image, dtype=np.float32) / 255.0
    colour = np.stack([np.clip(1.5 - abs(4 * h - 3), 0, 1), np.clip(1.5 - abs(4 * h - 2), 0, 1),
                       np.clip(1.5 - abs(4 * h - 1), 0, 1)], axis=-1)  # jet colour map
    gray = np.asarray(stored.convert("RGB"), dtype=np.float32) / 255.0
    alpha = 0.45 * h[..., None]
    overlay = Image.fromarray(np.uint8(255 * ((1 - alpha) * gray + alpha * colour)))
    buffer = io.BytesIO()
    overlay.save(buffer, format="PNG", optimize=True)
    return {
        "method": "class activation map of the decided class, last convolutional layer",
        "overlay_png": base64.b64encode(buffer.getvalue()).decode(),
        "map_shape": list(cam.shape),
    }
