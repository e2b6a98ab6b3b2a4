"""The lean serving copy of a model artifact: what ``endpoint_mode=lambda`` loads instead of ``model.tar.gz``.

``model.tar.gz`` is packed by SageMaker from ``/opt/ml/model`` (member order is not ours to choose) and carries
what an endpoint needs besides the model: ``code/lib`` (the endpoint image's unpacked wheels, 150 MB of the
archive's 170 unpacked), the torch weights, the unserved ONNX file, the report. A predict function streaming
all of it to find the few files it runs spends most of its cold start on bytes it discards. The Evaluate step,
which already streams the whole archive once to take its digest, keeps only these members and writes them as
their own object (:func:`build`); the register step records that object's SHA-256 on the model package, and the
predict function loads it after checking that digest (``lambdas.served_model``).

Members: ``model.json``, the ONNX file it names as served (``onnx``: INT8 or FP32), the guard it names
(``out_of_distribution.file``) and the handler's flat ``code/*.py``. An uncompressed tar: the ONNX weights do
not compress, and gunzip would cost the cold start what it saves on the wire. Deterministic (sorted names,
zero times and owners), so a retried Evaluate writes the same bytes and the same digest.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterable

CONFIG = "model.json"


class IncompleteArtifact(ValueError):
    """The archive lacks a file its ``model.json`` names as served: no serving copy can be made from it."""


def candidate(name: str) -> bool:
    """Whether a member (``./`` stripped) may belong to the serving copy; read before ``model.json`` is known,
    so every top-level ONNX file and guard is kept until :func:`build` picks the served ones."""
    if name.startswith("code/"):
        return name.count("/") == 1 and name.endswith(".py")
    return "/" not in name and (name == CONFIG or name.endswith((".onnx", ".npz")))


def served_members(config: dict) -> set[str]:
    """The non-code members ``model.json`` says the handler loads."""
    guard = (config.get("out_of_distribution") or {}).get("file")
    return {CONFIG, config["onnx"], *([guard] if guard else [])}


def build(members: dict[str, bytes]) -> tuple[bytes, list[str]]:
    """The serving copy (an uncompressed tar) of the :func:`candidate` members of an artifact, and its names."""
    if CONFIG not in members:
        raise IncompleteArtifact(f"the artifact has no {CONFIG}")
    wanted = served_members(json.loads(members[CONFIG]))
    missing = sorted(wanted - members.keys())
    if missing or "code/inference.py" not in members:
        raise IncompleteArtifact(f"the artifact lacks {missing or ['code/inference.py']}, which {CONFIG} serves")
    names = sorted(name for name in members if name in wanted or name.startswith("code/"))
    return _tar((name, members[name]) for name in names), names


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tar(files: Iterable[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
