"""What `cxr models adopt-threshold` and `list` print for a package that adopts a site's threshold."""

from __future__ import annotations

from cxr.commands import models
from lambdas.domain import champion, threshold_amendment


def test_the_adopted_package_is_printed_with_its_paired_test_and_how_to_serve_it(capsys):
    answers = [{"content_hash": f"{i:02d}", "patient": f"p{i}", "truth": i % 2 == 0, "score": i / 40,
                "called": i / 40 >= 0.5} for i in range(40)]
    amended = threshold_amendment.answers_at({"version": "v1", "records": answers}, 0.6)["records"]
    comparison = champion.compare(champion.pair(answers, amended), resamples=200)
    result = {"version": 4, "status": "PendingManualApproval", "created": True, "threshold": "0.600",
              "promotion": {"reason": "threshold 0.600 adopted in place of v3's 0.5: pending a person's approval "
                                      "(`cxr models promote`)", "comparison": comparison}}
    models.print_adopted(result)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("v4 PendingManualApproval (registered): threshold 0.600 adopted in place of v3's 0.5: pending "
                        "a person's approval (`cxr models promote`)")
    assert lines[1] == ("  on the benchmark set, champion: the model at its own threshold; "
                        "challenger: at the adopted one")
    assert lines[2].startswith("  paired bootstrap over 40 patients (40 images), 200 resamples")
    assert [line.split()[0] for line in lines[3:7]] == list(champion.METRICS)
    assert lines[-1] == "  serve it with `cxr models promote 4`; `cxr models rollback` returns to the model's own"
    models.print_list([{"champion": False, "version": 4, "status": "PendingManualApproval",
                        "decision": "threshold-adopted", "run_id": "run-3-threshold-600", "dataset": "demo",
                        "benchmark": "v1", "artifact_sha256": "ab" * 32, "threshold": "0.600"}])
    assert capsys.readouterr().out.rstrip().endswith("sha256 abababababab  threshold 0.600")
