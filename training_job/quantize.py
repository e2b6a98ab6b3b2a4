"""INT8: the ONNX model statically quantized with ONNX Runtime, calibrated on training images.

QDQ format, weights per channel (signed 8-bit), activations unsigned 8-bit with ranges from
``CALIBRATION_IMAGES`` training inputs (min/max), as ONNX Runtime's static quantization does it. The
INT8 file is always written next to the FP32 one; the model serves it (``model.json`` ``onnx``) only when
its validation accuracy, scored by the model's own decision rule, is within ``MAX_ACCURACY_DROP`` of
FP32's. Both figures go into ``metrics.json``. On CPUs with VNNI or AMX ONNX Runtime runs the quantized
convolutions as integer dot products; ``bench/predict_path.py`` measures the speed-up.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

INT8_FILE = "model.int8.onnx"
MAX_ACCURACY_DROP = 0.005
"""Half a point of validation accuracy (the ``int8-max-drop`` hyperparameter's default)."""
CALIBRATION_IMAGES = 64
BATCH = 32


def quantize(fp32: Path, int8: Path, calibration: np.ndarray, method: str = "MinMax",
             exclude: Sequence[str] = ()) -> None:
    """Write the statically quantized copy of ``fp32`` to ``int8``, activation ranges from ``calibration`` by
    ONNX Runtime's calibrator ``method`` (``MinMax``, ``Percentile``, ``Entropy``), the ``exclude`` nodes left
    in FP32 (``bench/int8_accuracy.py`` compares them)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(np.array_split(calibration, max(1, len(calibration) // 8)))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"image": np.ascontiguousarray(batch, dtype=np.float32)}

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"  # shapes inferred and the graph folded first, as ORT advises
        quant_pre_process(str(fp32), str(prepared))
        quantize_static(str(prepared), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod[method], nodes_to_exclude=list(exclude))


def logits(path: Path, images, threads: int = 1, output: str = "logits") -> np.ndarray:
    """The model's ``output`` (its logits, or its ``features`` for the guard) on ``images`` (N x 1 x S x S, any
    array whose slices convert to float32: a split's ``data.Inputs`` is converted a batch at a time), on ``threads``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.concatenate([
        session.run([output], {"image": np.ascontiguousarray(images[i:i + BATCH], dtype=np.float32)})[0]
        for i in range(0, len(images), BATCH)])


def choose(model_dir: Path, fp32_file: str, calibration: np.ndarray, val_images: np.ndarray,
           accuracy: Callable[[np.ndarray], float], max_drop: float = MAX_ACCURACY_DROP) -> dict:
    """Quantize on ``calibration`` (training inputs), score both models on validation with ``accuracy``
    (logits -> accuracy), and say which one serves (INT8 when at most ``max_drop`` below FP32)."""
    quantize(model_dir / fp32_file, model_dir / INT8_FILE, calibration.astype(np.float32))
    fp32 = accuracy(logits(model_dir / fp32_file, val_images))
    int8 = accuracy(logits(model_dir / INT8_FILE, val_images))
    return {"file": INT8_FILE, "validation_accuracy": int8, "fp32_validation_accuracy": fp32,
            "max_accuracy_drop": max_drop, "calibration_images": int(len(calibration)),
            "served": bool(int8 >= fp32 - max_drop)}
