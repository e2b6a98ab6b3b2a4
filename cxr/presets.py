"""Named training recipes: hyperparameters for train.py that ``cxr train-local`` and ``cxr train`` expand.

``x-ray`` and ``small`` are the best recipes measured within the developers' 2-core CPU budgets
(bench/RESULTS.md); ``gpu`` is for a SageMaker GPU instance (the pipeline's default
``ml.g4dn.xlarge``): a larger input and a longer schedule that the CPU budget cannot afford, with the
acquisition augmentation. Its code path is tested on the CPU with tiny overrides; its figures wait
for a GPU.
"""

from __future__ import annotations

SMALL_SIDE = 64
"""Images whose median stored side is at most this use the ``small`` preset."""
PRESETS = {
    "x-ray": {},  # train.py's own defaults, which the pipeline runs too: one recipe, measured in bench/RESULTS.md
    # grey levels as stored: on the shift proxies equalised 28 px input lost specificity on the held-out exposure
    # cluster (bench/RESULTS.md, "PneumoniaMNIST: eight recipes in full on the two worst proxies"); three networks
    # (seeds s, s + 1, s + 2) served as their mean held up better there than one ("PneumoniaMNIST: seed ensembles")
    "small": {"architecture": "compact", "image-size": 28, "epochs": 20, "batch-size": 128, "lr": 3e-3, "width": 32,
              "augment": "light", "intensity": "linear", "ensemble": 3},
    "gpu": {"architecture": "efficientnet_lite2", "image-size": 288, "epochs": 30, "batch-size": 64, "lr": 1e-3,
            "warmup-epochs": 1, "patience": 6, "ema-decay": 0.998, "augment": "acquisition"},
}


def expand(name: str | None, overrides: dict) -> dict:
    """The preset's hyperparameters (none: train.py's defaults) with ``overrides`` on top."""
    return {**PRESETS[name or "x-ray"], **overrides}
