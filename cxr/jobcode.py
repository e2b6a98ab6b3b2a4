"""Import the training job's flat modules (``import imaging``, ``import metrics``) from the CLI.

The job and the endpoint import their siblings by bare name because SageMaker runs them from
``/opt/ml/code``; the CLI loads the very same files, with their folder first on ``sys.path``,
under names that cannot collide with anything else installed.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from infra.packaging import TRAINING_JOB


def load(name: str, directory: Path = TRAINING_JOB) -> ModuleType:
    """Module ``name`` from ``directory``, its flat imports resolved in that same folder."""
    directory = Path(directory).resolve()
    qualified = f"_cxr_job_{abs(hash(str(directory)))}_{name}"
    if qualified in sys.modules:
        return sys.modules[qualified]
    spec = importlib.util.spec_from_file_location(qualified, directory / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[qualified] = module  # dataclasses look their module up while it executes
    sys.path.insert(0, str(directory))
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[qualified]
        raise
    finally:
        sys.path.remove(str(directory))
    return module
