"""``cxr.jobcode``: each folder's flat imports resolve in that folder, whatever another folder imported first."""

from __future__ import annotations

import sys

from cxr import jobcode


def test_a_sibling_of_another_folder_does_not_stand_in(tmp_path, monkeypatch):
    """A model's older ``code/decision.py`` imported first must not become the training job's ``decision``."""
    model_code, job = tmp_path / "model" / "code", tmp_path / "job"
    for folder, version in ((model_code, "model"), (job, "job")):
        folder.mkdir(parents=True)
        (folder / "decision.py").write_text(f"VERSION = {version!r}\n")
    (model_code / "inference.py").write_text("import decision\nSEEN = decision.VERSION\n")
    (job / "metrics.py").write_text("from decision import VERSION as SEEN\n")
    monkeypatch.delitem(sys.modules, "decision", raising=False)
    assert jobcode.load("inference", model_code).SEEN == "model"
    assert jobcode.load("metrics", job).SEEN == "job"
    assert sys.modules["decision"].VERSION == "model"  # what the first folder imported is left as it was
