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
    # a sibling another folder already imported by the same bare name (a model's older code/decision.py)
    # must not stand in for this folder's: set it aside while this module imports, then put it back
    foreign = {stem: sys.modules.pop(stem) for stem in (p.stem for p in directory.glob("*.py"))
               if stem in sys.modules and not _inside(sys.modules[stem], directory)}
    sys.path.insert(0, str(directory))
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[qualified]
        raise
    finally:
        sys.path.remove(str(directory))
        sys.modules.update(foreign)
    return module


def _inside(module: ModuleType, directory: Path) -> bool:
    file = getattr(module, "__file__", None)
    return file is not None and Path(file).parent.resolve() == directory
