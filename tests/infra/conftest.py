"""One synthesis of the whole CDK app per test run (~5 s plus bundling), shared by every infra test (and worker)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
PARTS = "parts.json"
"""Beside the templates: each part's stack name and template file."""


@dataclass
class StackFile:
    """What the tests read of a synthesized stack (a plain record: another worker may have synthesized it)."""
    stack_name: str
    template_file: str


@dataclass
class Synthesized:
    outdir: Path
    stacks: dict  # part name -> StackFile
    templates: dict  # stack name -> template dict

    def template(self, part: str) -> dict:
        return self.templates[self.stacks[part].stack_name]

    def resources(self, type_: str, part: str | None = None) -> dict:
        templates = [self.template(part)] if part else self.templates.values()
        return {lid: r for t in templates for lid, r in t["Resources"].items() if r["Type"] == type_}


@pytest.fixture(scope="session")
def synth(tmp_path_factory) -> Synthesized:
    """The app as ``cdk synth`` builds it: default context, cdk-nag packs on (synthesis fails on a finding)."""
    from shared_synthesis import synthesized_once

    def synthesize(outdir: Path) -> None:
        from infra.app import build, make_app

        context = json.loads((Path(__file__).resolve().parents[2] / "cdk.json").read_text())["context"]
        app = make_app(outdir=str(outdir), context=context)
        stacks = build(app)
        app.synth()
        (outdir / PARTS).write_text(json.dumps({part: {"stack_name": s.stack_name, "template_file": s.template_file}
                                                for part, s in stacks.items()}))

    outdir = synthesized_once(tmp_path_factory, "cdk.out", synthesize)
    stacks = {part: StackFile(**s) for part, s in json.loads((outdir / PARTS).read_text()).items()}
    templates = {s.stack_name: json.loads((outdir / s.template_file).read_text()) for s in stacks.values()}
    return Synthesized(outdir, stacks, templates)
