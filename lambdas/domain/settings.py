"""Settings read from the environment, with the defaults the stacks and the local mode use."""

from __future__ import annotations

import os
from dataclasses import dataclass

from . import imaging


@dataclass(frozen=True)
class Settings:
    data_bucket: str | None
    max_upload_bytes: int
    service: str

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        max_bytes = int(env.get("MAX_UPLOAD_BYTES", imaging.MAX_UPLOAD_BYTES))
        if not 0 < max_bytes <= imaging.MAX_UPLOAD_BYTES:
            raise ValueError(f"MAX_UPLOAD_BYTES must be in 1..{imaging.MAX_UPLOAD_BYTES}, got {max_bytes}")
        return cls(
            data_bucket=env.get("DATA_BUCKET"),
            max_upload_bytes=max_bytes,
            service=env.get("POWERTOOLS_SERVICE_NAME", "cxr"),
        )
