"""Report images drawn with Pillow (no plotting library in the training image): confusion matrix,
ROC curve and reliability diagram, each a small PNG for the model artifact and the run report."""

from __future__ import annotations

from pathlib import Path

import decision
import numpy as np
from PIL import Image, ImageDraw
from sklearn import metrics as skm

SIZE, MARGIN = 420, 60
INK, GRID, ACCENT, MUTED = (20, 20, 20), (220, 220, 220), (200, 40, 40), (90, 90, 200)


def _canvas(title: str) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (SIZE + 2 * MARGIN, SIZE + 2 * MARGIN), "white")
    draw = ImageDraw.Draw(image)
    draw.text((MARGIN, 15), title, fill=INK)
    return image, draw


def _plot_frame(draw: ImageDraw.ImageDraw, xlabel: str, ylabel: str) -> None:
    for t in np.linspace(0, 1, 6):
        x, y = MARGIN + t * SIZE, MARGIN + (1 - t) * SIZE
        draw.line([(x, MARGIN), (x, MARGIN + SIZE)], fill=GRID)
        draw.line([(MARGIN, y), (MARGIN + SIZE, y)], fill=GRID)
        draw.text((x - 8, MARGIN + SIZE + 5), f"{t:.1f}", fill=INK)
        draw.text((MARGIN - 28, y - 5), f"{t:.1f}", fill=INK)
    draw.rectangle([MARGIN, MARGIN, MARGIN + SIZE, MARGIN + SIZE], outline=INK)
    draw.text((MARGIN + SIZE // 2 - 40, MARGIN + SIZE + 25), xlabel, fill=INK)
    draw.text((5, MARGIN - 20), ylabel, fill=INK)


def _xy(px: float, py: float) -> tuple[float, float]:
    return MARGIN + px * SIZE, MARGIN + (1 - py) * SIZE


def confusion_matrix_png(matrix: list[list[int]], classes: list[str], path: Path) -> None:
    image, draw = _canvas("confusion matrix (rows: truth, columns: prediction)")
    cm = np.asarray(matrix, dtype=float)
    rows = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    cell = SIZE / len(classes)
    for i, truth in enumerate(classes):
        draw.text((5, MARGIN + (i + 0.5) * cell), truth[:9], fill=INK)
        draw.text((MARGIN + (i + 0.3) * cell, MARGIN - 15), classes[i][:9], fill=INK)
        for j in range(len(classes)):
            shade = int(255 - 200 * rows[i, j])
            box = [MARGIN + j * cell, MARGIN + i * cell, MARGIN + (j + 1) * cell, MARGIN + (i + 1) * cell]
            draw.rectangle(box, fill=(shade, shade, 255), outline=INK)
            draw.text((box[0] + cell / 2 - 15, box[1] + cell / 2 - 5), f"{int(cm[i, j])}",
                      fill="white" if rows[i, j] > 0.6 else INK)
    image.save(path)


def roc_png(y: np.ndarray, probs: np.ndarray, classes: list[str], path: Path) -> None:
    image, draw = _canvas("ROC, pneumonia vs normal")
    _plot_frame(draw, "1 - specificity", "sensitivity")
    truth = (np.asarray(y) != classes.index(decision.NORMAL)).astype(int)
    if 0 < truth.sum() < len(truth):
        fpr, tpr, _ = skm.roc_curve(truth, decision.pneumonia_probability(probs, classes))
        draw.line([_xy(a, b) for a, b in zip(fpr, tpr, strict=True)], fill=ACCENT, width=3)
        draw.text((MARGIN + 10, MARGIN + 10), f"AUC {skm.auc(fpr, tpr):.3f}", fill=INK)
    draw.line([_xy(0, 0), _xy(1, 1)], fill=MUTED)
    image.save(path)


def reliability_png(before: list[dict], after: list[dict], path: Path) -> None:
    image, draw = _canvas("reliability: blue before, red after temperature scaling")
    _plot_frame(draw, "confidence", "accuracy")
    draw.line([_xy(0, 0), _xy(1, 1)], fill=GRID, width=2)
    for bins, colour in ((before, MUTED), (after, ACCENT)):
        points = [_xy(b["confidence"], b["accuracy"]) for b in bins if b["count"]]
        if len(points) > 1:
            draw.line(points, fill=colour, width=3)
        for x, y in points:
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
    image.save(path)
