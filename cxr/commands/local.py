"""`cxr local up` / `cxr local down`: start and stop the offline cloud as a long-lived local server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

from cxr import target
from cxr.errors import UsageError, UserError
from infra.config import Config, ConfigError

START_TIMEOUT_S = 300
"""Start-up synthesizes the CDK app (half a minute, more on a first run that bundles the Lambda code)."""


def register(subparsers) -> None:
    parser = subparsers.add_parser("local", help="run the offline cloud as a local server (`up`, `down`)",
                                   description=__doc__.splitlines()[0])
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = actions.add_parser("up", help="start the offline cloud in the background")
    up.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    up.add_argument("--stage", default="local")
    up.add_argument("--quality-gate", default=None, metavar="JSON",
                    help='gate for this offline cloud, e.g. \'{"accuracy": 0.8}\' (default: the demo profile\'s)')
    up.set_defaults(run=run_up)
    down = actions.add_parser("down", help="stop the offline cloud (its state is gone with it)")
    down.add_argument("--purge", action="store_true", help="also delete its working folder (logs, models)")
    down.set_defaults(run=run_down)


def running_state() -> dict | None:
    """The server's state file, if the process it names is alive."""
    if not target.LOCAL_STATE.exists():
        return None
    state = json.loads(target.LOCAL_STATE.read_text())
    try:
        os.kill(state["pid"], 0)
    except ProcessLookupError:
        target.LOCAL_STATE.unlink(missing_ok=True)
        return None
    return state


def run_up(args) -> int:
    try:  # fail here, not in the background process
        Config.demo(stage=args.stage, **({"quality_gate": args.quality_gate} if args.quality_gate else {}))
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    state = running_state()
    if state:
        print(f"the offline cloud is already running at {state['url']} (stage {state['stage']}, pid {state['pid']})")
        return 0
    target.LOCAL_DIR.mkdir(exist_ok=True)
    port = args.port or _free_port()
    log = target.LOCAL_DIR / "server.log"
    with log.open("w") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "cxr.local.server", "--port", str(port), "--stage", args.stage,
             "--workdir", str(target.LOCAL_DIR / "work"), "--state-file", str(target.LOCAL_STATE),
             *(["--quality-gate", args.quality_gate] if args.quality_gate else [])],
            stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            cwd=target.ROOT)
    print(f"starting the offline cloud on 127.0.0.1:{port} (synthesizing the CDK app; log: {log})", flush=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            raise UserError("the offline cloud failed to start: " + " | ".join(tail))
        if target.LOCAL_STATE.exists() and json.loads(target.LOCAL_STATE.read_text())["pid"] == process.pid:
            print(f"offline cloud up at http://127.0.0.1:{port}, stage {args.stage}: add --local to cxr commands")
            return 0
        time.sleep(0.5)
    process.terminate()
    raise UserError(f"the offline cloud did not start within {START_TIMEOUT_S} s; see {log}")


def run_down(args) -> int:
    state = running_state()
    if state is None:
        print("the offline cloud is not running")
    else:
        os.kill(state["pid"], signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and running_state():
            time.sleep(0.2)
        if running_state():
            os.kill(state["pid"], signal.SIGKILL)
            target.LOCAL_STATE.unlink(missing_ok=True)
        print(f"offline cloud at {state['url']} stopped")
    if args.purge:
        shutil.rmtree(target.LOCAL_DIR, ignore_errors=True)
    return 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
