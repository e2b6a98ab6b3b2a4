"""The review page's Content-Security-Policy, shared by CloudFront (``infra.stacks.review``) and the offline server.

The page is one HTML file with one inline script; the policy admits exactly that script (its SHA-256, computed
from the file at synthesis), inline styles, images drawn from blobs, and connections to the origins given
(the API, Cognito and S3's presigned URLs); nothing may frame it, and it submits no forms anywhere.
"""

from __future__ import annotations

import base64
import hashlib
import re

from infra import wiring

_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def script_hashes(html: str) -> list[str]:
    return [f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
            for body in _SCRIPT.findall(html)]


def content_security_policy(connect: list[str]) -> str:
    html = (wiring.REVIEW_PAGE_DIR / "index.html").read_text()
    return "; ".join((
        "default-src 'none'", f"script-src {' '.join(script_hashes(html))}", "style-src 'unsafe-inline'",
        "img-src 'self' data: blob:", f"connect-src 'self' {' '.join(connect)}".strip(), "base-uri 'none'",
        "form-action 'none'", "frame-ancestors 'none'"))
