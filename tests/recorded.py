"""An offline cloud whose deployment principals' calls are recorded for the IAM check (cxr/local/iam_*.py)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from cxr.local import cloud as local_cloud
from cxr.local import iam_trace
from cxr.local.iam_deployment import Deployment
from cxr.local.names import LocalNames
from infra import wiring
from infra.config import Config


@contextmanager
def recorded_cloud(synthesized, config: Config, workdir: Path, checked: list):
    """The offline cloud running the synthesized pipeline, every call of the deployment's principals recorded;
    after the block ``checked`` holds the ``Deployment`` built from the templates, the expanded calls and the
    events (what ``iam_trace.save`` writes)."""
    names = LocalNames(config.stage)
    with (iam_trace.recording(sync_callers=frozenset({names.state_machine_role_arn})) as recorder,
          local_cloud.start(config, workdir) as running):
        running.install_pipeline(synthesized)
        yield running
        recorder.record_executions(running.state_machine_arn,
                                   skip_functions=frozenset({running.names.training_task_arn}))
        deployment = Deployment.from_templates(
            synthesized.templates, running.names, running.kms_key_arn,
            {running.names.function(f): running.environment(f) for f in wiring.FUNCTIONS.values()})
    checked += [deployment, deployment.expand(recorder.calls, recorder.events), list(recorder.events)]
