"""The evaluation report: one self-contained HTML page per model, for people to look at.

Written by training (``report/report.html`` in the model directory and the job's output, which the
pipeline's Evaluate step copies to ``reports/<run>/``) and by ``cxr evaluate --report``. The page
makes no request: charts are inline SVG drawn here (the training image has no plotting library)
and thumbnails are ``data:`` URIs. Images are named by content hash, never by file name: Kermany's
file names (``person1_bacteria_1.jpeg``) hold patient ids.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import decision
import metrics as m
import numpy as np
from PIL import Image
from sklearn import metrics as skm

REPORT_FILE = "report.html"
MAX_CASES = 150
"""Thumbnails shown at most, shared between the groups: about 8 kB each, so a page stays near a megabyte."""
THUMBNAIL_SIDE = 192

CHART_W, CHART_H, PAD_L, PAD_R, PAD_T, PAD_B = 360, 300, 48, 14, 30, 42
COLOURS = ("#c62828", "#1565c0", "#2e7d32", "#6a1b9a")


def referrals(probs: np.ndarray, classes: list[str], config: dict) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Which cases the model refers to a radiologist, and the band on p(pneumonia) that refers: the
    endpoint's own rule (``decision.decide_all``)."""
    rule = decision.Rule.of(config)
    return decision.decide_all(probs, classes, rule).refer, rule.band


@dataclass
class Evaluation:
    """What one scoring of a labelled set produced, the report's only input.

    ``overlay(i, k)`` returns image ``i`` as a PNG with the class-activation heat map of class ``k``
    (called only for the cases shown); ``referred`` and ``band`` come from :func:`referrals`.
    """

    config: dict
    evaluated_on: str
    y: np.ndarray
    probs: np.ndarray
    content_hashes: list[str]
    overlay: Callable[[int, int], bytes]
    referred: np.ndarray
    band: tuple[float, float] | None
    probs_uncalibrated: np.ndarray | None = None
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


# -- SVG charts ----------------------------------------------------------------------------------
def _x(v: float) -> float:
    return PAD_L + v * (CHART_W - PAD_L - PAD_R)


def _y(v: float) -> float:
    return PAD_T + (1 - v) * (CHART_H - PAD_T - PAD_B)


def _path(xs, ys) -> str:
    xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    if len(xs) > 400:  # a curve of thousands of steps draws the same at 400 points
        keep = np.unique(np.linspace(0, len(xs) - 1, 400).round().astype(int))
        xs, ys = xs[keep], ys[keep]
    steps = (f"{'M' if i == 0 else 'L'}{_x(a):.1f},{_y(b):.1f}" for i, (a, b) in enumerate(zip(xs, ys, strict=True)))
    return " ".join(steps)


def chart(title: str, xlabel: str, ylabel: str, series: list[tuple[str, object, object]], *,
          points: list[tuple[str, float, float]] = (), vline: tuple[str, float] | None = None,
          band: tuple[float, float] | None = None, diagonal: bool = False, dots: bool = False,
          bars: list[tuple[float, float, float, int]] = ()) -> str:
    """A unit-square chart as an inline ``<svg>``: named series (lines, or markers with ``dots``),
    marked points, one vertical line (the threshold), one shaded x-interval (the referral band) and
    bars ``(low, high, height, count)`` labelled with their count (a reliability diagram's bins)."""
    out = [f'<svg viewBox="0 0 {CHART_W} {CHART_H}" role="img" aria-label="{html.escape(title)}">',
           f"<title>{html.escape(title)}</title>"]
    if band:
        out.append(f'<rect x="{_x(band[0]):.1f}" y="{_y(1):.1f}" width="{_x(band[1]) - _x(band[0]):.1f}" '
                   f'height="{_y(0) - _y(1):.1f}" fill="#fff3c4"/>')
    for t in np.linspace(0, 1, 6):
        out.append(f'<line x1="{_x(t):.1f}" y1="{_y(0):.1f}" x2="{_x(t):.1f}" y2="{_y(1):.1f}" stroke="#e4e4e4"/>')
        out.append(f'<line x1="{_x(0):.1f}" y1="{_y(t):.1f}" x2="{_x(1):.1f}" y2="{_y(t):.1f}" stroke="#e4e4e4"/>')
        out.append(f'<text x="{_x(t):.1f}" y="{_y(0) + 14:.1f}" text-anchor="middle">{t:.1f}</text>')
        out.append(f'<text x="{_x(0) - 5:.1f}" y="{_y(t) + 4:.1f}" text-anchor="end">{t:.1f}</text>')
    out.append(f'<rect x="{_x(0)}" y="{_y(1)}" width="{_x(1) - _x(0)}" height="{_y(0) - _y(1)}" fill="none" '
               'stroke="#444"/>')
    for low, high, height, count in bars:
        out.append(f'<rect x="{_x(low) + 1:.1f}" y="{_y(height):.1f}" width="{_x(high) - _x(low) - 2:.1f}" '
                   f'height="{_y(0) - _y(height):.1f}" fill="#e0e0e0" stroke="#9e9e9e"/>')
        out.append(f'<text x="{(_x(low) + _x(high)) / 2:.1f}" y="{_y(height) - 3:.1f}" text-anchor="middle">'
                   f"{count}</text>")
    if diagonal:
        out.append(f'<path d="{_path([0, 1], [0, 1])}" stroke="#999" stroke-dasharray="4 3" fill="none"/>')
    if vline:
        out.append(f'<line x1="{_x(vline[1]):.1f}" y1="{_y(0):.1f}" x2="{_x(vline[1]):.1f}" y2="{_y(1):.1f}" '
                   'stroke="#000" stroke-width="1.5" stroke-dasharray="6 3"/>')
    legend = []
    for i, (name, xs, ys) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        if dots:
            out += [f'<circle cx="{_x(a):.1f}" cy="{_y(b):.1f}" r="3.5" fill="{colour}"/>'
                    for a, b in zip(xs, ys, strict=True)]
        else:
            out.append(f'<path d="{_path(xs, ys)}" stroke="{colour}" stroke-width="2" fill="none"/>')
        legend.append((name, colour))
    for name, a, b in points:
        out.append(f'<circle cx="{_x(a):.1f}" cy="{_y(b):.1f}" r="5" fill="none" stroke="#000" stroke-width="2"/>')
        legend.append((name, "#000"))
    if vline:
        legend.append((vline[0], "#000"))
    if bars:
        legend.append(("grey bars: accuracy of each confidence bin, served (images in the bin above)", "#616161"))
    if band:
        legend.append((f"shaded: referral band [{band[0]:.2f}, {band[1]:.2f}]", "#b08800"))
    out.append(f'<text x="{(_x(0) + _x(1)) / 2:.1f}" y="{CHART_H - 8}" text-anchor="middle">'
               f"{html.escape(xlabel)}</text>")
    out.append(f'<text transform="translate(12 {(_y(0) + _y(1)) / 2:.1f}) rotate(-90)" text-anchor="middle">'
               f"{html.escape(ylabel)}</text>")
    out.append(f'<text x="{_x(0):.1f}" y="16" class="title">{html.escape(title)}</text></svg>')
    keys = "".join(f'<li style="color:{colour}">{html.escape(name)}</li>' for name, colour in legend)
    return f'<div class="chart">{"".join(out)}<ul class="legend">{keys}</ul></div>'



# -- sections ------------------------------------------------------------------------------------
def _f(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _when(iso: str | None) -> str:
    return f"{iso[:19].replace('T', ' ')} UTC" if iso else "not recorded"


def _header(ev: Evaluation, result: dict) -> str:
    cfg = ev.config
    sizes = ", ".join(f"{name} {n}" for name, n in (cfg.get("data") or {}).items()) or "not recorded"
    band = f"[{ev.band[0]:.3f}, {ev.band[1]:.3f}]" if ev.band else "none (no normal class)"
    rows = [("model", cfg.get("model_id")), ("classes", ", ".join(cfg["classes"])),
            ("training data (images per split)", sizes), ("scored", f"{ev.evaluated_on}: {len(ev.y)} images"),
            ("threshold on p(pneumonia)", _f(cfg.get("threshold")) if cfg.get("threshold") is not None
             else "0.5 (none fitted on validation)" if decision.NORMAL in cfg["classes"] else "none (no normal class)"),
            ("referral band on p(pneumonia)", band), ("temperature", _f(cfg.get("temperature"))),
            ("model trained", _when(cfg.get("finished"))), ("report written", _when(ev.created))]
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    summary = [("accuracy", result["accuracy"]), ("balanced accuracy", result["balanced_accuracy"]),
               ("macro-F1", result["macro_f1"]), ("ROC-AUC (all classes)", result["roc_auc"]), ("ECE", result["ece"])]
    if "binary" in result:
        b = result["binary"]
        summary += [("sensitivity (pneumonia)", b["sensitivity"]), ("specificity", b["specificity"]),
                    ("binary ROC-AUC", b["roc_auc"])]
    summary.append(("referred to a radiologist", float(np.mean(ev.referred)) if len(ev.referred) else None))
    cards = "".join(f'<div class="card"><div class="value">{_f(v)}</div><div>{html.escape(k)}</div></div>'
                    for k, v in summary)
    return f'<section id="summary"><h2>Model and data</h2><table class="facts">{body}</table>' \
           f'<div class="cards">{cards}</div></section>'


def _per_class(result: dict) -> str:
    def undefined_without_support(r: dict, name: str) -> str:  # no image of the class: no recall, so no F1
        return f"{r[name]:.3f}" if r["support"] else '<span title="no image of this class was scored">-</span>'

    rows = "".join(f"<tr><th>{html.escape(c)}</th><td>{r['precision']:.3f}</td>"
                   f"<td>{undefined_without_support(r, 'recall')}</td><td>{undefined_without_support(r, 'f1')}</td>"
                   f"<td>{r['support']}</td></tr>" for c, r in result["per_class"].items())
    return ('<section id="per-class"><h2>Per class</h2><table class="grid"><tr><th>class</th><th>precision</th>'
            f"<th>recall</th><th>F1</th><th>support</th></tr>{rows}</table></section>")


def _confusion(result: dict, classes: list[str]) -> str:
    cm = np.asarray(result["confusion_matrix"], dtype=float)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in classes)
    rows = ""
    for i, truth in enumerate(classes):
        cells = "".join(
            f'<td style="background:rgba(21,101,192,{share[i, j]:.2f});'
            f'color:{"#fff" if share[i, j] > 0.55 else "#000"}">'
            f"{int(cm[i, j])}<small> {100 * share[i, j]:.0f}%</small></td>" for j in range(len(classes)))
        rows += f"<tr><th>{html.escape(truth)}</th>{cells}</tr>"
    return ('<section id="confusion"><h2>Confusion matrix</h2><p>Rows: truth; columns: the label given '
            f'(with the threshold). Shading: share of the row.</p><table class="grid confusion"><tr><th></th>{head}'
            f"</tr>{rows}</table></section>")


def _binary_charts(ev: Evaluation) -> str:
    classes = ev.config["classes"]
    if decision.NORMAL not in classes:
        return '<section id="curves"><h2>Curves</h2><p>No normal class: no pneumonia-vs-normal view.</p></section>'
    rule = decision.Rule.of(ev.config)
    threshold = rule.threshold
    truth = (ev.y != classes.index(decision.NORMAL)).astype(int)
    score = decision.pneumonia_probability(ev.probs, classes)
    called = decision.decide_all(ev.probs, classes, rule).index != classes.index(decision.NORMAL)
    if truth.min() == truth.max():
        return ('<section id="curves"><h2>Curves</h2><p>The scored set holds one side only (all normal or all '
                "pneumonia): no ROC or precision-recall curve.</p></section>")
    tp, fp = int((called & (truth == 1)).sum()), int((called & (truth == 0)).sum())
    sensitivity, specificity = tp / truth.sum(), 1 - fp / (1 - truth).sum()
    fpr, tpr, _ = skm.roc_curve(truth, score)
    precision, recall, _ = skm.precision_recall_curve(truth, score)
    ap = skm.average_precision_score(truth, score)
    operating = f"operating point (threshold {threshold:.3f})"
    roc = chart(f"ROC, pneumonia vs normal: AUC {skm.auc(fpr, tpr):.3f}", "1 - specificity", "sensitivity",
                [("p(pneumonia)", fpr, tpr)], points=[(operating, 1 - specificity, sensitivity)], diagonal=True)
    pr = chart(f"Precision-recall: average precision {ap:.3f}", "recall (sensitivity)", "precision",
               [("p(pneumonia)", recall, precision)],
               points=[(operating, sensitivity, tp / max(tp + fp, 1))])
    grid = np.linspace(0, 1, 201)
    calls = score[None, :] >= grid[:, None]
    sens = (calls & (truth == 1)).sum(axis=1) / truth.sum()
    spec = (~calls & (truth == 0)).sum(axis=1) / (1 - truth).sum()
    acc = (calls == (truth == 1)).mean(axis=1)
    mark = ("threshold", threshold)
    sweep = chart("Threshold sweep", "threshold on p(pneumonia)", "rate",
                  [("sensitivity", grid, sens), ("specificity", grid, spec), ("accuracy (binary)", grid, acc)],
                  vline=mark, band=ev.band)
    return f'<section id="curves"><h2>Pneumonia vs normal: p(pneumonia) = 1 - p(normal)</h2>' \
           f'<div class="charts">{roc}{pr}{sweep}</div></section>'


def _reliability(ev: Evaluation) -> str:
    series = []
    views = [("served (calibrated)", ev.probs), ("before temperature scaling", ev.probs_uncalibrated)]
    for name, probs in views:
        if probs is not None:
            bins = [b for b in m.reliability(probs, ev.y) if b["count"]]
            series.append((f"{name}: mean confidence and accuracy per bin, ECE "
                           f"{m.expected_calibration_error(probs, ev.y):.3f}",
                           [b["confidence"] for b in bins], [b["accuracy"] for b in bins]))
    bars = [(b["low"], b["high"], b["accuracy"], b["count"]) for b in m.reliability(ev.probs, ev.y) if b["count"]]
    svg = chart("Reliability: accuracy against confidence", "confidence (probability of the label's class)",
                "accuracy", series, diagonal=True, dots=True, bars=bars)
    return (f'<section id="reliability"><h2>Reliability diagram</h2><p>A calibrated model\'s dots lie on the '
            f'diagonal; bins with few images say little.</p><div class="charts">{svg}</div></section>')


def _thumbnail(png: bytes) -> str:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _figure(ev: Evaluation, i: int, label: int, tags: list[str]) -> str:
    classes = ev.config["classes"]
    p = (f"<br>p(pneumonia) {decision.pneumonia_probability(ev.probs[i], classes):.3f}"
         if decision.NORMAL in classes else "")
    badges = "".join(f'<span class="tag {t}">{t}</span>' for t in tags)
    return (f'<figure class="{" ".join(tags)}"><img src="{_thumbnail(ev.overlay(i, label))}" '
            f'alt="X-ray {ev.content_hashes[i][:12]} with heat map"><figcaption><code>{ev.content_hashes[i][:16]}'
            f"</code> {badges}<br>truth <b>{html.escape(classes[ev.y[i]])}</b>, label "
            f"<b>{html.escape(classes[label])}</b><br>p(label) {ev.probs[i, label]:.3f}{p}</figcaption></figure>")


def _cases(ev: Evaluation) -> str:
    """Thumbnails in groups, each capped: errors most confident first (a confident error is what a
    reviewer must see), referred cases closest to a coin toss first; a cap per group keeps the
    referred cases from being crowded out by the errors."""
    classes = ev.config["classes"]
    rule = decision.Rule.of(ev.config)
    pred = decision.decide_all(ev.probs, classes, rule).index
    wrong = pred != ev.y
    confident = ("most confident", lambda i: -float(ev.probs[i, pred[i]]))
    groups = []
    if decision.NORMAL in classes:
        normal = classes.index(decision.NORMAL)
        binary_wrong = wrong & ((pred == normal) | (ev.y == normal))
        groups.append(("Pneumonia against normal: missed or false pneumonia", binary_wrong, confident))
        if len(classes) > 2:
            groups.append(("Wrong pneumonia sub-type", wrong & ~binary_wrong, confident))
        odds = decision.distance_to_threshold(ev.probs, classes, rule)
        uncertain = ("closest to the threshold", lambda i: float(odds[i]))
    else:
        groups.append(("Misclassified", wrong, confident))
        uncertain = ("least confident", lambda i: float(ev.probs[i, pred[i]]))
    groups.append(("Referred, label right", ev.referred & ~wrong, uncertain))
    cap = MAX_CASES // len(groups)
    sections = []
    for title, members, (order_name, key) in groups:
        order = sorted(np.flatnonzero(members).tolist(), key=key)
        tags = {i: [t for t, on in (("wrong", wrong[i]), ("referred", ev.referred[i])) if on] for i in order[:cap]}
        figures = [_figure(ev, i, int(pred[i]), tags[i]) for i in order[:cap]]
        shown = f"the {cap} {order_name} shown" if len(order) > cap else "all shown" if order else "none"
        sections.append(f"<h3>{html.escape(title)}: {len(order)} ({shown})</h3>"
                        f'<div class="thumbs">{"".join(figures)}</div>')
    return ('<section id="cases"><h2>Misclassified and referred images</h2><p>Each with the class-activation heat '
            "map of the label given (where the network looked), named by the first 16 hex digits of its content "
            f"hash (the SHA-256 prediction records carry), never by file name. {int(wrong.sum())} misclassified, "
            f"{int(ev.referred.sum())} referred.</p>{''.join(sections)}</section>")


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ccc}h3{font-size:15px}
table.facts th{text-align:left;padding-right:16px;font-weight:600}
table.grid{border-collapse:collapse}table.grid td,table.grid th{border:1px solid #ccc;padding:4px 10px;text-align:right}
table.confusion td{min-width:70px}small{opacity:.75}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin-top:12px}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 12px;min-width:110px}
.card .value{font-size:20px;font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:16px}.chart svg{width:360px;height:300px;font-size:10px}
svg .title{font-size:12px;font-weight:600}ul.legend{margin:2px 0 0 40px;padding:0;font-size:12px}
.thumbs{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;width:192px;font-size:11px;border:2px solid #ddd;padding:4px}
figure.wrong{border-color:#c62828}figure.referred:not(.wrong){border-color:#f0b400}
figure img{width:192px;height:auto;display:block}
.tag{font-size:10px;padding:0 4px;border-radius:3px;color:#fff}.tag.wrong{background:#c62828}
.tag.referred{background:#b08800}
"""


def render(ev: Evaluation) -> str:
    """The whole page."""
    classes = ev.config["classes"]
    result = m.classification_metrics(ev.y, ev.probs, classes, decision.Rule.of(ev.config))
    title = f"Evaluation report: {ev.config.get('model_id')} on {ev.evaluated_on}"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width"><style>{STYLE}</style></head><body>'
            f"<h1>{html.escape(title)}</h1>{_header(ev, result)}{_per_class(result)}{_confusion(result, classes)}"
            f"{_binary_charts(ev)}{_reliability(ev)}{_cases(ev)}</body></html>")
