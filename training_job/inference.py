"""Endpoint handler (SageMaker PyTorch inference toolkit): ``model_fn``, ``input_fn``, ``predict_fn``, ``output_fn``.

Serves ``model.onnx`` with ONNX Runtime (vendored in ``code/wheels``: endpoints have no internet)
and imports neither torch nor boto3, so a cold start is ONNX Runtime's load and nothing more.
Every input goes through the one normaliser (``imaging.py``, shipped beside this file), then the
resize policy recorded in ``model.json``, exactly as at training time; logits become probabilities
and a label through ``decision.py`` (also shipped here), the rule every training figure used.

Requests: ``image/png`` or ``image/jpeg`` bytes (raw uploads or the stored, preprocessed PNG), or
``application/json`` ``{"image": "<base64>", "explain": true}`` to also receive a class-activation
heat-map overlay showing where the model looked.

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
import time
from dataclasses import dataclass
from pathlib import Path

import decision
import imaging
import numpy as np
import onnxruntime as ort
from PIL import Image

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

    @property
    def classes(self) -> list[str]:
        return self.config["classes"]


@dataclass
class Request:
    image: imaging.NormalisedImage
    explain: bool


def model_fn(model_dir: str, context=None) -> Model:
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "model.json").read_text())
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("CXR_ONNX_THREADS", "0"))  # 0: one per core
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(model_dir / config["onnx"]), options, providers=["CPUExecutionProvider"])
    return Model(session, config, config.get("model_id", model_dir.name))


def input_fn(body: bytes | str, content_type: str, context=None) -> Request:
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


def predict_fn(request: Request, model: Model, context=None) -> dict:
    started = time.perf_counter()
    config = model.config
    stored = imaging.open_stored(request.image.png)
    logits, cams = model.session.run(None, {"image": model_input(stored, config)})
    probs = decision.model_probabilities(logits[0], config)
    classes = model.classes
    index = int(decision.predict(probs, classes, config.get("threshold")))
    result = {
        "label": classes[index],
        "confidence": float(probs[index]),
        "probabilities": {c: float(p) for c, p in zip(classes, probs, strict=True)},
        "pneumonia_probability": (float(decision.pneumonia_probability(probs, classes))
                                  if decision.NORMAL in classes else None),
        "model_id": model.model_id,
        "content_hash": request.image.content_hash,
    }
    if request.explain:
        result["explanation"] = explanation(stored, cams[0, index], config["resize_policy"])
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return result


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
