"""INT8 accuracy on validation per quantization recipe: which of ONNX Runtime's options keep the model's accuracy.

Usage: ``python bench/int8_accuracy.py JOB_DIR [--json PATH]``, ``JOB_DIR`` being ``cxr train-local --out``'s folder
(its ``model/`` and the staged ``work/channels/``). Quantizes the FP32 ``model.onnx`` once per recipe and scores FP32
and each INT8 file on the validation split with the model's own decision rule (temperature, sub-type prior,
threshold and referral margin from ``model.json``), as ``train.py`` chooses. Recipes: ONNX Runtime's static QDQ
quantization as shipped (64 training images, min/max), more calibration images (the whole training split), the
percentile and entropy calibrators, and the first convolution and the classifier left in FP32; also each INT8
file's top-1 agreement with FP32 on the validation and training X-rays (a finer measure than 46 images'
accuracy, where one X-ray is 2.2 points). Validation and training only: the test split is not read.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "training_job"))

import decision  # noqa: E402
import metrics as m  # noqa: E402
import numpy as np  # noqa: E402
import quantize  # noqa: E402
import train  # noqa: E402


def first_conv_and_classifier(path: Path) -> list[str]:
    """The graph's first ``Conv`` and its classifier, by node name: the last ``Conv``, ``Gemm`` or ``MatMul`` (the
    exported networks classify with a 1x1 convolution, whose map is the class-activation output, then average)."""
    import onnx

    layers = [n.name for n in onnx.load(str(path)).graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    return [layers[0], layers[-1]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("job_dir", type=Path)
    parser.add_argument("--json", type=Path, metavar="PATH")
    args = parser.parse_args()
    model_dir, channels = args.job_dir / "model", args.job_dir / "work" / "channels"
    config = json.loads((model_dir / "model.json").read_text())
    classes = config["classes"]
    loaded = SimpleNamespace(train=channels / "train", validation=channels / "validation", test=None,
                             image_size=config["image_size"], resize_policy=config["resize_policy"],
                             intensity=config["intensity"])
    splits, _ = train.load_channels(loaded, classes)
    val_x, val_y = splits["validation"].inputs[:].numpy(), splits["validation"].targets.numpy()
    rule = decision.Rule.for_classes(classes, config["threshold"], config["referral_margin"])

    def accuracy(path: Path) -> float:
        probs = decision.probabilities(quantize.logits(path, val_x), classes, config["temperature"],
                                       config["subtype_prior"])
        return m.classification_metrics(val_y, probs, classes, rule)["accuracy"]

    fp32 = model_dir / config.get("onnx_fp32", "model.onnx")
    seed = config["hyperparameters"]["seed"]
    every = splits["train"].inputs[:].numpy()
    shipped = train.calibration_images(splits["train"], seed)
    excluded = first_conv_and_classifier(fp32)
    recipes = {
        "shipped: 64 images, min/max": dict(calibration=shipped),
        f"all {len(every)} training images, min/max": dict(calibration=every),
        "64 images, percentile 99.999": dict(calibration=shipped, method="Percentile"),
        "64 images, entropy": dict(calibration=shipped, method="Entropy"),
        "64 images, first conv + classifier FP32": dict(calibration=shipped, exclude=excluded),
        f"all {len(every)}, entropy, first conv + classifier FP32": dict(calibration=every, method="Entropy",
                                                                          exclude=excluded),
    }
    check = np.concatenate([val_x, every])  # top-1 agreement with FP32: less coarse than 46 images' accuracy
    fp32_calls = quantize.logits(fp32, check).argmax(1)
    result = {"model": config["model_id"], "validation_images": len(val_y), "fp32_accuracy": accuracy(fp32),
              "excluded_nodes": excluded, "recipes": {}}
    print(f"{config['model_id']}: {len(val_y)} validation X-rays, FP32 accuracy {result['fp32_accuracy']:.3f}; "
          f"agreement with FP32's top-1 on {len(check)} validation and training X-rays")
    with tempfile.TemporaryDirectory() as tmp:
        for name, recipe in recipes.items():
            started = time.time()
            out = Path(tmp) / "int8.onnx"
            try:
                quantize.quantize(fp32, out, recipe["calibration"], method=recipe.get("method", "MinMax"),
                                  exclude=recipe.get("exclude", ()))
            except ValueError as exc:  # ORT's histogram calibrators on a constant tensor: "Too many bins ..."
                result["recipes"][name] = {"error": str(exc)}
                print(f"  {name:<52} failed: {exc}")
                continue
            score = accuracy(out)
            agree = float(np.mean(quantize.logits(out, check).argmax(1) == fp32_calls))
            result["recipes"][name] = {"accuracy": score, "agreement": agree, "seconds": round(time.time() - started)}
            print(f"  {name:<52} {score:.3f} ({score - result['fp32_accuracy']:+.3f}), agreement {agree:.3f}, "
                  f"{time.time() - started:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
