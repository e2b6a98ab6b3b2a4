"""What a trained model's registry entry says: its approval status and why (pure).

A challenger is approved only when it clears the configured minimums (``lambdas.evaluate_model.judge``)
and the champion gate: not worse than the serving champion on the dataset's benchmark set by more than
the margin (``lambdas.domain.champion``). The paired test needs both models' answers on the same set
version; when there is no champion, no set yet, or a champion that predates the set (it may have
trained on those very images), the minimums alone decide, and the reason says which. With
``approval=manual`` a model that would be approved waits as ``PendingManualApproval``.

The SageMaker Model Registry's own statuses are used as they are (``ModelApprovalStatus``: Approved |
Rejected | PendingManualApproval, SageMaker API Reference, ``ModelPackageSummary``); who serves is
the approved package approved last (``APPROVED_AT``), so a rollback is "reject the champion, deploy
the next".
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from lambdas.domain import champion

APPROVED, REJECTED, PENDING = "Approved", "Rejected", "PendingManualApproval"
STATUSES = (APPROVED, REJECTED, PENDING)
MODES = ("auto", "manual")

# CustomerMetadataProperties keys (each package's record of where it came from)
RUN_ID = "cxr:run-id"
DATASET = "cxr:dataset"
ARTIFACT_SHA256 = "cxr:artifact-sha256"
CODE_VERSION = "cxr:code-version"
TRAINING_JOB = "cxr:training-job"
DATA_SUMMARY = "cxr:data-summary"
REPORT = "cxr:report"
BENCHMARK_VERSION = "cxr:benchmark-version"
BENCHMARK_ANSWERS = "cxr:benchmark-answers"
DECISION = "cxr:decision"
APPROVED_AT = "cxr:approved-at"
"""When the package was approved (ISO 8601, UTC): the champion is the approved package approved last."""
SERVING_ARTIFACT = "cxr:serving-artifact"
SERVING_SHA256 = "cxr:serving-sha256"
"""The lean serving copy the Evaluate step wrote (``lambdas.domain.serving_copy``) and its digest: what
``endpoint_mode=lambda`` loads; absent on packages registered before it."""

RECORD_FILE = "promotion.json"
"""The decision and its statistics, in the package's report folder (``reports/<run>/``)."""

MAX_PROPERTIES, MAX_KEY, MAX_VALUE, MAX_DESCRIPTION = 50, 128, 256, 1024
_METADATA_TEXT = re.compile(r"^[\w\s.:/=+\-@]*$")
"""``CustomerMetadataProperties`` keys and values: ``^([\\p{L}\\p{Z}\\p{N}_.:\\/=+\\-@]*)$``, keys 1-128 and values
1-256 characters, at most 50 entries (SageMaker API Reference, ``ModelPackage``); moto checks none of it."""


def metadata_problems(properties: Mapping[str, str]) -> list[str]:
    """What SageMaker would refuse in a ``CustomerMetadataProperties`` map (empty: nothing)."""
    problems = [f"{len(properties)} properties, at most {MAX_PROPERTIES}"] if len(properties) > MAX_PROPERTIES else []
    for key, value in properties.items():
        for what, text, limit in (("key", key, MAX_KEY), ("value", value, MAX_VALUE)):
            if not isinstance(text, str) or not 1 <= len(text) <= limit or not _METADATA_TEXT.match(text):
                problems.append(f"{what} {text!r} of {key!r}: 1-{limit} letters, digits, spaces or _.:/=+-@")
    return problems


def metadata_value(text: object) -> str:
    """A value SageMaker accepts: other characters become '-', cut to 256 (never empty)."""
    return (re.sub(r"[^\w\s.:/=+\-@]", "-", str(text)) or "-")[:MAX_VALUE]


def champion_of(packages: Sequence[Mapping]) -> Mapping | None:
    """The serving champion among described packages: approved, approved last (then the highest version)."""
    approved = [p for p in packages if p.get("ModelApprovalStatus") == APPROVED]
    if not approved:
        return None
    return max(approved, key=lambda p: (p.get("CustomerMetadataProperties", {}).get(APPROVED_AT, ""),
                                        p.get("ModelPackageVersion", 0)))


def decide(minimums: Mapping, challenger: Mapping | None, champion_package: Mapping | None,
           champion_answers: Mapping | None, *, mode: str, margin: float) -> dict:
    """The approval status, a one-line reason, and the paired test's statistics when it ran.

    ``minimums``: the Evaluate step's verdict; ``challenger`` / ``champion_answers``: ``benchmark.json``
    bodies (``{"version", "records"}``) or None; ``champion_package``: the champion's description or None.
    """
    if mode not in MODES:
        raise ValueError(f"approval mode must be one of {MODES}, not {mode!r}")
    if not minimums.get("passed"):
        return _decision(REJECTED, "below-minimums", "below the minimums: " + "; ".join(minimums.get("failures", [])))
    version = (challenger or {}).get("version")
    comparison = None
    if champion_package is None:
        status, decision, reason = APPROVED, "first-model", "no champion yet: the minimums decide"
    elif not version or not (challenger or {}).get("records"):
        status, decision = APPROVED, "minimums-only"
        reason = "no benchmark set for this dataset yet: the minimums decide"
    elif not champion_answers or champion_answers.get("version") != version:
        champion_version = (champion_answers or {}).get("version") or "none"
        status, decision = APPROVED, "minimums-only"
        reason = (f"champion v{champion_package.get('ModelPackageVersion')} predates benchmark set {version} (its "
                  f"answers are on {champion_version}; it may have trained on these images): the minimums decide")
    else:
        comparison = champion.compare(champion.pair(champion_answers["records"], challenger["records"]), margin=margin)
        champion_name = f"champion v{champion_package.get('ModelPackageVersion')}"
        if comparison["passed"]:
            status, decision = APPROVED, "not-worse"
            reason = (f"not worse than {champion_name} by more than {margin} on benchmark set {version} "
                      f"({comparison['patients']} patients, {comparison['images']} images)")
        else:
            status, decision = REJECTED, "worse-than-champion"
            reason = f"worse than {champion_name} on benchmark set {version}: " + "; ".join(comparison["failures"])
    if status == APPROVED and mode == "manual":
        status, reason = PENDING, f"{reason}; approval=manual: waits for `cxr models promote`"
    return _decision(status, decision, reason, comparison,
                     champion_package.get("ModelPackageArn") if champion_package else None)


def _decision(status: str, decision: str, reason: str, comparison: dict | None = None,
              champion_arn: str | None = None) -> dict:
    return {"status": status, "approved": status == APPROVED, "decision": decision, "reason": reason,
            "champion": champion_arn, "comparison": comparison}
