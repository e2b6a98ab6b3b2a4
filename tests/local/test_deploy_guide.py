"""The README's first-deploy guide, run command by command against the offline cloud.

The guide's ``sh`` blocks are read from README.md. A line marked ``# AWS-only`` is skipped; every
other line must be a ``.venv/bin/cxr`` command with an offline equivalent, translated as the guide
says. The offline cloud is the account and its deployment in one, so it is started before the
guide (with a gate any model passes: the guide's dataset is replaced by a small generated one) and
``cxr deploy`` becomes ``cxr local up``, which finds it running; every other command gets
``--local``, and ``cxr train`` the quick recipe of tests/local/test_cli_local.py. The commands run
in a folder holding that dataset as ``chest_xray/`` (Kaggle's layout) and the repository's
``samples/``.
"""

import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEADING = "## First deploy, step by step"
CXR = ".venv/bin/cxr"
AWS_ONLY = re.compile(r"\s#\s*AWS-only\b")
QUICK = ["--hp", "architecture=compact", "--hp", "image-size=64", "--hp", "epochs=3", "--hp", "batch-size=16"]
ANY_MODEL = '{"accuracy": 0.0}'


@dataclass(frozen=True)
class Command:
    line: str
    aws_only: bool

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.line, comments=True)


def guide_commands(readme: str) -> list[Command]:
    """Every line of the ``sh`` blocks between the guide's heading and the next section."""
    start = readme.index(HEADING)
    end = readme.find("\n## ", start + len(HEADING))
    section = readme[start:end if end != -1 else None]
    commands = []
    for block in re.findall(r"^```sh\n(.*?)^```$", section, flags=re.MULTILINE | re.DOTALL):
        for line in block.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(Command(line, bool(AWS_ONLY.search(line))))
    return commands


def offline(argv: list[str]) -> list[str] | None:
    """The `cxr` arguments that do the same on the offline cloud; None when there is no such command."""
    if len(argv) < 2 or argv[0] != CXR:
        return None
    command, rest = argv[1], argv[2:]
    if command == "deploy":
        return ["local", "up"] if not rest else None
    if command == "local":
        return argv[1:]
    return [*argv[1:], "--local", *(QUICK if command == "train" else [])]


def readme() -> str:
    return (ROOT / "README.md").read_text()


def test_every_guide_command_runs_offline_or_is_marked_aws_only():
    commands = guide_commands(readme())
    missing = [c.line for c in commands if not c.aws_only and offline(c.argv) is None]
    assert not missing, f"no offline equivalent and not marked # AWS-only: {missing}"
    steps = [c.argv[1] if c.argv[0] == CXR else c.argv[0] for c in commands if not c.argv[0].startswith("code=")]
    assert steps.index("doctor") < steps.index("deploy") < steps.index("upload-dataset") < steps.index("train")
    assert steps.index("train") < steps.index("predict") < steps.index("teardown") < len(steps) - 1 - steps[::-1].index(
        "deploy"), "the guide ends with a redeploy after the teardown"
    assert any(c.aws_only and c.argv[:2] == ["npx", "cdk"] for c in commands)
    assert any(c.aws_only and "request-service-quota-increase" in c.argv for c in commands)


def test_an_unmarked_command_without_an_offline_equivalent_is_caught():
    guide = f"{HEADING}\n\n```sh\nnpx cdk bootstrap\n{CXR} deploy --bootstrap\n{CXR} doctor\n```\n\n## Next\n"
    commands = guide_commands(guide)
    assert [offline(c.argv) for c in commands] == [None, None, ["doctor", "--local"]]
    assert offline([CXR, "deploy"]) == ["local", "up"] and offline([CXR, "train", "--dataset", "d"])[-2:] == QUICK[-2:]
    assert not any(c.aws_only for c in commands)
    assert guide_commands(guide.replace("bootstrap\n", "bootstrap  # AWS-only\n", 1))[0].aws_only


@pytest.fixture
def workdir(tmp_path):
    from training import synthetic

    synthetic.write_dataset(tmp_path / "chest_xray" / "train", per_class=14)
    synthetic.write_dataset(tmp_path / "chest_xray" / "test", per_class=4, seed=1)
    (tmp_path / "samples").symlink_to(ROOT / "samples")
    return tmp_path


@pytest.mark.slow
def test_the_guide_runs_against_the_offline_cloud(workdir):
    env = {**os.environ, "CXR_LOCAL_DIR": str(workdir / "cxr-local"), "AWS_EC2_METADATA_DISABLED": "true",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

    def cxr(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cxr.cli", *args], cwd=workdir, env=env, capture_output=True,
                              text=True, timeout=600, check=False)

    ran = []
    started = time.monotonic()
    up = cxr("local", "up", "--quality-gate", ANY_MODEL)
    print(f"{time.monotonic() - started:6.1f} s  cxr local up (the account's stand-in)")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        for command in guide_commands(readme()):
            if command.aws_only:
                continue
            args = offline(command.argv)
            started = time.monotonic()
            result = cxr(*args)
            print(f"{time.monotonic() - started:6.1f} s  cxr {shlex.join(args)}")  # shown by pytest -rP
            assert result.returncode == 0, f"{command.line}\n-> cxr {shlex.join(args)}\n{result.stdout}{result.stderr}"
            ran.append((args[0], result.stdout))
    finally:
        cxr("local", "down")
    commands = [name for name, _ in ran]
    assert commands.count("doctor") == 2 and commands.count("status") == 2, commands
    first_doctor, predicted, last_status = ran[commands.index("doctor")][1], dict(ran)["predict"], ran[-1][1]
    assert first_doctor.splitlines()[-1].startswith("no blockers")
    assert "state NotifyDeployed" in dict(ran)["train"]
    assert re.search(r"^person1946_bacteria_4874\.jpeg +(normal|bacterial|viral) ", predicted, re.MULTILINE), predicted
    # after the teardown and the redeploy: no endpoint, the dataset still there (42 training and 12 test images)
    assert "endpoint cxr-local: not deployed" in last_status and "54 processed images" in last_status, last_status
