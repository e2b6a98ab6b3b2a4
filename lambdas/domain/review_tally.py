"""One pass over the review table (``cxr.reviews`` and ``lambdas.field_monitor`` stream it) into counters: each
model's review strata, its reviewed tasks' cells for ``field_performance`` and ``site_threshold``, and when it last
predicted. Memory does not grow with the table, and the order the items come in does not matter."""

from __future__ import annotations

from collections.abc import Mapping

from . import field_performance, site_threshold
from .review import OPEN, QUALITY_CONTROL, TASK_SORT_KEY, VERDICT_PREFIX, WITHDRAWN


class Tally:
    """Reads a review table's items once into counters: per model, the strata's task weights and the reviewed
    tasks' cells.

    A task's verdicts are settled when the scan moves on from its item collection: a sequential Scan reads a
    partition key's items together, in sort-key order (``task`` before ``verdict#...``). Items read apart from
    their task (any other order) wait until the end, with the record of every task whose status says it has
    verdicts but whose verdicts were not read with it.
    """

    def __init__(self, default_sample_rate: float):
        self.default_sample_rate = default_sample_rate
        self.weight: dict[str | None, dict[str, float]] = {}
        self.latest: dict[str, str] = {}
        """Each model's newest task (its ``created_at``): which models are still predicting."""
        self.cells: dict[str | None, dict[field_performance.Reviewed, int]] = {}
        self.scored: dict[str | None, dict[site_threshold.Scored, int]] = {}
        """Per model, reviewed tasks by ``site_threshold.Scored`` cell (p(pneumonia) and verdict)."""
        self.points: dict[str | None, set[site_threshold.OperatingPoint]] = {}
        """Per model, the operating points (threshold and band) its tasks were decided at."""
        self._open: tuple[str, dict | None, list[str]] | None = None  # the item collection being read
        self._orphans: dict[str, dict] = {}  # reviewed tasks read without their verdicts
        self._loose: dict[str, list[str]] = {}  # verdicts read without their task

    def add(self, item: Mapping) -> None:
        """A task item (``sk`` ``task``) or a verdict item (``verdict#...``); anything else is ignored."""
        pk = item["pk"]
        if self._open is not None and self._open[0] != pk:
            self._close()
        if item["sk"] == TASK_SORT_KEY:
            record = self._task(item)
            self._open = (pk, record, [])
        elif item["sk"].startswith(VERDICT_PREFIX):
            if self._open is not None and self._open[0] == pk and self._open[1] is not None:
                self._open[2].append(item["verdict"])
            else:
                self._loose.setdefault(pk, []).append(item["verdict"])

    def _task(self, item: Mapping) -> dict | None:
        """Count the task's weight in its stratum; its record, or None when it counts nowhere (withdrawn)."""
        model = item.get("model_id")
        if item.get("created_at") and item["created_at"] > self.latest.get(str(model), ""):
            self.latest[str(model)] = item["created_at"]
        if item.get("status") == WITHDRAWN or item.get("reason") not in field_performance.STRATA:
            return None
        rate = item.get("sample_rate", self.default_sample_rate)
        p = field_performance.inclusion(item["reason"], rate if item["reason"] == QUALITY_CONTROL else None)
        self.weight.setdefault(model, dict.fromkeys(field_performance.STRATA, 0.0))[item["reason"]] += 1.0 / p
        point = site_threshold.OperatingPoint.of(item)
        if point is not None:
            self.points.setdefault(model, set()).add(point)
        return {"model_id": model, "stratum": item["reason"], "inclusion": p, "label": item["label"],
                "status": item.get("status"), "probability": item.get("pneumonia_probability")}

    def _close(self) -> None:
        pk, record, verdicts = self._open
        self._open = None
        if record is None:
            return
        if verdicts:
            self._count(record, verdicts)
        elif record["status"] not in (OPEN, None):  # its verdicts are elsewhere in the scan
            self._orphans[pk] = record

    def _count(self, record: dict, verdicts: list[str]) -> None:
        verdict = field_performance.settled(verdicts)
        if verdict is None:
            return
        cell = field_performance.Reviewed(record["stratum"], record["inclusion"], record["label"], verdict)
        cells = self.cells.setdefault(record["model_id"], {})
        cells[cell] = cells.get(cell, 0) + 1
        if record["probability"] is not None:
            scored = site_threshold.cell(record["stratum"], record["inclusion"], record["probability"], verdict)
            cells = self.scored.setdefault(record["model_id"], {})
            cells[scored] = cells.get(scored, 0) + 1

    def estimates(self, references: Mapping[str, Mapping[str, field_performance.Reference]] | None = None,
                  bands: Mapping[str, tuple[float, float]] | None = None) -> dict[str, dict]:
        """``field_performance.estimate`` for every model with a reviewed task, against ``references[model_id]``
        where given, and beside it (``threshold``) the threshold its site calls for (``site_threshold.fit``),
        inside ``bands[model_id]`` too where given (an adopted threshold's model: its own band)."""
        self._finish()
        references, bands = references or {}, bands or {}
        return {str(model): {**field_performance.estimate(cells, self.weight[model], references.get(model)),
                             "threshold": self._threshold(model, bands.get(str(model)))}
                for model, cells in sorted(self.cells.items(), key=lambda kv: str(kv[0]))}

    def _finish(self) -> None:
        """Settle the collection being read, and the tasks whose verdicts were read apart from them."""
        if self._open is not None:
            self._close()
        for pk, record in list(self._orphans.items()):
            if pk in self._loose:
                self._count(record, self._loose[pk])
        self._orphans, self._loose = {}, {}

    def _threshold(self, model: str | None, limit: tuple[float, float] | None = None) -> dict:
        """``site_threshold.fit`` for the model's tasks: they must record their p(pneumonia) and one operating
        point (a model without a normal class has none; tasks of one model id that disagree are not pooled); its
        band narrowed to ``limit`` where given."""
        points = self.points.get(model, set())
        if len(points) != 1 or not self.scored.get(model):
            reason = (f"its tasks record {len(points)} different thresholds" if len(points) > 1
                      else "its tasks record no threshold and p(pneumonia)")
            return {"threshold": None, "note": reason}
        point = next(iter(points))
        if limit is not None:
            point = site_threshold.OperatingPoint(point.threshold, (max(point.band[0], limit[0]),
                                                                    min(point.band[1], limit[1])))
        return site_threshold.fit(self.scored[model], self.weight[model], point)
