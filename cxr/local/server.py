"""The offline cloud as a long-lived local server (`cxr local up`): moto's server plus the local runtime.

Separate `cxr ... --local` commands talk to it over HTTP like they would talk to AWS, so an
upload, a training run and a status query see the same state. The hooks and executors are the
ones the in-process mode uses; handlers inside this process reach the server through
``AWS_ENDPOINT_URL``, and moto's Step Functions engine through ``MOTO_PORT``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from pathlib import Path


def serve(port: int, stage: str, workdir: Path, state_file: Path, quality_gate: str | None = None) -> None:
    url = f"http://127.0.0.1:{port}"
    os.environ.update({
        "MOTO_PORT": str(port),
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
    })
    os.environ.pop("AWS_PROFILE", None)
    from moto.core.config import default_user_config
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer

    from cxr.local import cloud as local_cloud
    from cxr.local import functions, hooks, pipeline
    from infra.config import Config

    default_user_config.setdefault("stepfunctions", {})["execute_state_machine"] = True
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    config = Config.demo(stage=stage, **({"quality_gate": quality_gate} if quality_gate else {}))
    cloud = local_cloud.LocalCloud(config=config, workdir=workdir)
    try:
        with hooks.installed(cloud), functions.routed_stdout():
            cloud.provision()
            cloud.install_pipeline(pipeline.synthesize(config, workdir / "cdk.out"))
            state_file.write_text(json.dumps({"url": url, "pid": os.getpid(), "stage": stage,
                                              "workdir": str(workdir)}))
            print(f"offline cloud ready at {url} (stage {stage})", flush=True)
            stopped.wait()
    finally:
        state_file.unlink(missing_ok=True)
        cloud.lambda_log.close()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stage", required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--state-file", type=Path, required=True)
    parser.add_argument("--quality-gate", default=None, help="JSON: metric path -> minimum")
    args = parser.parse_args()
    serve(args.port, args.stage, args.workdir, args.state_file, args.quality_gate)


if __name__ == "__main__":
    main()
