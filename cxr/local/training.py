"""Local SageMaker training jobs: the real ``train.py`` run under the script-mode contract.

What SageMaker does around a job, done here against local S3: channels downloaded (``S3Prefix``
and ``ManifestFile`` data sources), the ``sourcedir.tar.gz`` named by ``sagemaker_submit_directory``
run by :func:`cxr.training_run.run_training_job` (the same runner as ``cxr train-local``),
checkpoints synced from and to ``CheckpointConfig.S3Uri`` (so a restarted job resumes),
``model.tar.gz`` and ``output.tar.gz`` uploaded where ``DescribeTrainingJob`` says, and the
job's status set to ``Completed`` or ``Failed`` with the reason.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import boto3

from cxr import training_run
from cxr.local import hosts
from cxr.local.hosts import CONTAINER_ROOT
from cxr.local.iam_trace import acting_as
from lambdas.domain.layout import split_s3_uri

FRAMEWORK_PREFIX = "sagemaker_"
"""Hyperparameters the container keeps for itself (sagemaker-training's ``SAGEMAKER_PREFIX``); the rest are the
script's command-line flags."""


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
    bucket, key = split_s3_uri(source["S3Uri"])
    if source["S3DataType"] == "ManifestFile":
        manifest = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        prefix_bucket, prefix = split_s3_uri(manifest[0]["prefix"])
        keys = [(prefix_bucket, prefix + relative, relative) for relative in manifest[1:]]
    else:
        paginator = s3.get_paginator("list_objects_v2")
        folder = key[: key.rfind("/") + 1]  # SageMaker keeps the path below the prefix's last '/'
        keys = [
            (bucket, obj["Key"], obj["Key"][len(folder):])
            for page in paginator.paginate(Bucket=bucket, Prefix=key)
            for obj in page.get("Contents", [])
            if not obj["Key"].endswith("/")
        ]
    for object_bucket, object_key, relative in keys:
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(object_bucket, object_key, str(target))
    return len(keys)


class LocalTrainingJobs:
    """Starts each job moto records on a worker thread and keeps moto's view of it truthful."""

    def __init__(self, workdir: Path):
        self.workdir = workdir / "training-jobs"
        self.threads: dict[str, threading.Thread] = {}
        self.processes: dict[str, subprocess.Popen] = {}
        self.stop_requested: set[str] = set()

    def start(self, job: Any) -> None:
        thread = threading.Thread(target=self._run, args=(job,), name=f"training-{job.training_job_name}", daemon=True)
        self.threads[job.training_job_name] = thread
        thread.start()

    def wait(self, name: str, timeout: float | None = None) -> None:
        self.threads[name].join(timeout)

    def stop(self, job: Any) -> None:
        """StopTrainingJob: SIGTERM, as SageMaker sends it; train.py checkpoints and exits, the job ends Stopped."""
        if job.training_job_status != "InProgress":
            return
        self.stop_requested.add(job.training_job_name)
        job.training_job_status = job.secondary_status = "Stopping"
        process = self.processes.get(job.training_job_name)
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)

    def _run(self, job: Any) -> None:
        with acting_as(job.role_arn):  # SageMaker reads the channels and writes the outputs as the job's role
            self._run_as_role(job)

    def _run_as_role(self, job: Any) -> None:
        job_dir = self.workdir / job.training_job_name
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
            if hyperparameters.get("sagemaker_program") != "train.py":
                raise RuntimeError(f"ClientError: entry point {hyperparameters.get('sagemaker_program')!r} "
                                   "is not this project's train.py")
            sourcedir = self._sourcedir(hyperparameters["sagemaker_submit_directory"], job_dir)
            checkpoint_uri = (job.checkpoint_config or {}).get("S3Uri")
            if checkpoint_uri:
                self._sync_down(checkpoint_uri, job_dir / "checkpoints")
            job.secondary_status = "Training"
            user_hps = {k: v for k, v in hyperparameters.items() if not k.startswith(FRAMEWORK_PREFIX)}
            output_dir = job_dir / "output" / "data"
            try:
                if job.resource_config["InstanceCount"] > 1:  # the container's own launch on simulated hosts
                    (job_dir / "checkpoints").mkdir(exist_ok=True)
                    model_dir, output_dir = hosts.run_job(
                        job_dir, resources=job.resource_config, hyperparameters=job.hyper_parameters,
                        input_data_config=job.input_data_config, channels=channels, checkpoints=job_dir / "checkpoints",
                        on_start=lambda cluster: self._started(job, cluster))
                else:
                    model_dir = training_run.run_training_job(
                        channels, user_hps, job_dir, sourcedir=sourcedir, checkpoint_dir=job_dir / "checkpoints",
                        on_start=lambda process: self._started(job, process))
            finally:
                if checkpoint_uri:
                    self._sync_up(job_dir / "checkpoints", checkpoint_uri)
            if job.training_job_name in self.stop_requested:
                job.training_job_status = job.secondary_status = "Stopped"
                return
            job.secondary_status = "Uploading"
            self._upload_tar(model_dir, job.model_artifacts["S3ModelArtifacts"])
            output = job.model_artifacts["S3ModelArtifacts"].rsplit("/", 1)[0] + "/output.tar.gz"
            self._upload_tar(output_dir, output)
            job.training_job_status = job.secondary_status = "Completed"
        except Exception as exc:  # the job fails; the pipeline reads the reason from DescribeTrainingJob
            if job.training_job_name in self.stop_requested:
                job.training_job_status = job.secondary_status = "Stopped"
                return
            job.training_job_status = job.secondary_status = "Failed"
            log = job_dir / "train.log"
            tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:]) if log.exists() else ""
            job.failure_reason = f"{exc} {tail}".strip()[:1024]
        finally:
            from moto.core.utils import utcnow

            job.training_end_time = job.last_modified_time = utcnow()

    def _started(self, job: Any, process: subprocess.Popen) -> None:
        self.processes[job.training_job_name] = process
        if job.training_job_name in self.stop_requested:  # stopped while its channels were downloading
            process.send_signal(signal.SIGTERM)

    @staticmethod
    def _sourcedir(submit_directory: str, job_dir: Path) -> Path:
        """An S3 URI, or a path inside the container (the code arrives as an input channel under network isolation)."""
        if submit_directory.startswith(CONTAINER_ROOT):
            return job_dir / submit_directory.removeprefix(CONTAINER_ROOT)
        archive = job_dir / "sourcedir.tar.gz"
        boto3.client("s3").download_file(*split_s3_uri(submit_directory), str(archive))
        return archive

    @staticmethod
    def _sync_down(uri: str, destination: Path) -> None:
        download_channel({"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri}}}, destination)

    @staticmethod
    def _sync_up(source: Path, uri: str) -> None:
        bucket, prefix = split_s3_uri(uri)
        for path in source.rglob("*"):
            if path.is_file():
                boto3.client("s3").upload_file(str(path), bucket, f"{prefix.rstrip('/')}/{path.relative_to(source)}")

    @staticmethod
    def _upload_tar(folder: Path, uri: str) -> None:
        archive = training_run.pack_model(folder, folder.parent / (folder.name + ".tar.gz"))
        boto3.client("s3").upload_file(str(archive), *split_s3_uri(uri))
