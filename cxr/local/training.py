"""Local SageMaker training jobs: the real ``train.py`` run under the script-mode contract.

What SageMaker does around a job, done here against local S3: channels downloaded (``S3Prefix``
and ``ManifestFile`` data sources), the ``sourcedir.tar.gz`` named by ``sagemaker_submit_directory``
unpacked, ``sagemaker_program`` run with the other hyperparameters as flags and the ``SM_*``
environment, checkpoints synced from and to ``CheckpointConfig.S3Uri`` (so a restarted job
resumes), ``model.tar.gz`` and ``output.tar.gz`` uploaded where ``DescribeTrainingJob`` says,
and the job's status set to ``Completed`` or ``Failed`` with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import threading
from pathlib import Path
from typing import Any

import boto3

RESERVED = ("sagemaker_program", "sagemaker_submit_directory", "sagemaker_region", "sagemaker_container_log_level",
            "sagemaker_job_name")


def split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def decode_hyperparameters(hyperparameters: dict[str, str]) -> dict[str, Any]:
    """The SageMaker SDK JSON-encodes every value; plain strings are taken as they are."""
    decoded = {}
    for name, value in hyperparameters.items():
        try:
            decoded[name] = json.loads(value)
        except (TypeError, ValueError):
            decoded[name] = value
    return decoded


def download_channel(channel: dict, destination: Path) -> int:
    """Fetch one input channel into ``destination``; returns the number of files."""
    s3 = boto3.client("s3")
    source = channel["DataSource"]["S3DataSource"]
    bucket, key = split_s3(source["S3Uri"])
    if source["S3DataType"] == "ManifestFile":
        manifest = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        prefix_bucket, prefix = split_s3(manifest[0]["prefix"])
        keys = [(prefix_bucket, prefix + relative, relative) for relative in manifest[1:]]
    else:
        paginator = s3.get_paginator("list_objects_v2")
        keys = [
            (bucket, obj["Key"], obj["Key"][len(key):].lstrip("/"))
            for page in paginator.paginate(Bucket=bucket, Prefix=key)
            for obj in page.get("Contents", [])
            if not obj["Key"].endswith("/")
        ]
    for object_bucket, object_key, relative in keys:
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(object_bucket, object_key, str(target))
    return len(keys)


def run_script(code_dir: Path, program: str, hyperparameters: dict[str, Any], channels: dict[str, Path],
               job_dir: Path, log_path: Path) -> int:
    """Run the entry point as SageMaker's training toolkit runs it: flags from hyperparameters, SM_* env."""
    model_dir, output_dir, checkpoint_dir = job_dir / "model", job_dir / "output" / "data", job_dir / "checkpoints"
    for folder in (model_dir, output_dir, checkpoint_dir):
        folder.mkdir(parents=True, exist_ok=True)
    env = os.environ | {
        "SM_MODEL_DIR": str(model_dir),
        "SM_OUTPUT_DATA_DIR": str(output_dir),
        "SM_CHECKPOINT_DIR": str(checkpoint_dir),
        "SM_CHANNELS": json.dumps(sorted(channels)),
        "SM_HPS": json.dumps(hyperparameters),
        "SM_CURRENT_HOST": "algo-1",
        "SM_HOSTS": json.dumps(["algo-1"]),
        "SM_NUM_GPUS": "0",
        "SM_NUM_CPUS": str(os.cpu_count() or 1),
        "PYTHONUNBUFFERED": "1",
    }
    env |= {f"SM_CHANNEL_{name.upper()}": str(path) for name, path in channels.items()}
    flags = [part for name, value in hyperparameters.items() for part in (f"--{name}", str(value))]
    with log_path.open("w") as log:
        return subprocess.run([sys.executable, program, *flags], cwd=code_dir, env=env, stdout=log,
                              stderr=subprocess.STDOUT, check=False).returncode


class LocalTrainingJobs:
    """Starts each job moto records on a worker thread and keeps moto's view of it truthful."""

    def __init__(self, workdir: Path):
        self.workdir = workdir / "training-jobs"
        self.threads: dict[str, threading.Thread] = {}

    def start(self, job: Any) -> None:
        thread = threading.Thread(target=self._run, args=(job,), name=f"training-{job.training_job_name}", daemon=True)
        self.threads[job.training_job_name] = thread
        thread.start()

    def wait(self, name: str, timeout: float | None = None) -> None:
        self.threads[name].join(timeout)

    def _run(self, job: Any) -> None:
        job_dir = self.workdir / job.training_job_name
        log_path = job_dir / "train.log"
        try:
            job_dir.mkdir(parents=True, exist_ok=True)
            job.secondary_status = "Downloading"
            channels = {}
            for channel in job.input_data_config:
                path = job_dir / "input" / "data" / channel["ChannelName"]
                path.mkdir(parents=True, exist_ok=True)
                download_channel(channel, path)
                channels[channel["ChannelName"]] = path
            hyperparameters = decode_hyperparameters(job.hyper_parameters or {})
            code_dir = self._fetch_code(hyperparameters["sagemaker_submit_directory"], job_dir / "code")
            checkpoint_uri = (job.checkpoint_config or {}).get("S3Uri")
            if checkpoint_uri:
                self._sync_down(checkpoint_uri, job_dir / "checkpoints")
            job.secondary_status = "Training"
            user_hps = {k: v for k, v in hyperparameters.items() if k not in RESERVED}
            status = run_script(code_dir, hyperparameters["sagemaker_program"], user_hps, channels, job_dir, log_path)
            if checkpoint_uri:
                self._sync_up(job_dir / "checkpoints", checkpoint_uri)
            if status != 0:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
                raise RuntimeError(f"AlgorithmError: train.py exited with status {status}: {' | '.join(tail)}")
            job.secondary_status = "Uploading"
            self._upload_tar(job_dir / "model", job.model_artifacts["S3ModelArtifacts"])
            output = job.model_artifacts["S3ModelArtifacts"].rsplit("/", 1)[0] + "/output.tar.gz"
            self._upload_tar(job_dir / "output" / "data", output)
            job.training_job_status = job.secondary_status = "Completed"
        except Exception as exc:  # the job fails; the pipeline reads the reason from DescribeTrainingJob
            job.training_job_status = job.secondary_status = "Failed"
            job.failure_reason = str(exc)[:1024]
        finally:
            from moto.core.utils import utcnow

            job.training_end_time = job.last_modified_time = utcnow()

    @staticmethod
    def _fetch_code(uri: str, destination: Path) -> Path:
        destination.mkdir(parents=True, exist_ok=True)
        archive = destination.parent / "sourcedir.tar.gz"
        boto3.client("s3").download_file(*split_s3(uri), str(archive))
        with tarfile.open(archive) as tar:
            tar.extractall(destination, filter="data")
        return destination

    @staticmethod
    def _sync_down(uri: str, destination: Path) -> None:
        download_channel({"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri}}}, destination)

    @staticmethod
    def _sync_up(source: Path, uri: str) -> None:
        bucket, prefix = split_s3(uri)
        for path in source.rglob("*"):
            if path.is_file():
                boto3.client("s3").upload_file(str(path), bucket, f"{prefix.rstrip('/')}/{path.relative_to(source)}")

    @staticmethod
    def _upload_tar(folder: Path, uri: str) -> None:
        archive = folder.parent / (folder.name + ".tar.gz")
        with tarfile.open(archive, "w:gz") as tar:
            for path in sorted(folder.rglob("*")):
                tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)
        boto3.client("s3").upload_file(str(archive), *split_s3(uri))
