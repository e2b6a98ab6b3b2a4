"""The review page and API on localhost, against the offline cloud (`cxr review --local`, the browser tests).

moto's HTTP APIs execute nothing, so this server does what API Gateway and CloudFront do in AWS:

* serves ``infra/review_page/index.html`` and a ``config.json`` naming this server as API and Cognito endpoint;
* is the API's JWT authorizer: RS256 signature (moto's Cognito key set), issuer, audience (``client_id`` of an
  access token, as HTTP APIs check it), ``token_use`` and expiry, then hands the route to the real handler
  (:mod:`lambdas.review_api`) with payload 2.0's event, claims as strings (``cognito:groups`` as ``"[a b]"``);
* forwards the page's Cognito calls (sign-in and TOTP set-up, the actions a browser makes without
  credentials) to moto's Cognito;
* serves presigned S3 URLs (the handler's, rewritten to ``/s3?url=...``) after checking their expiry,
  with the CORS and ``Cache-Control: no-store`` headers the page relies on.
"""

from __future__ import annotations

import gzip
import json
import re
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, TextIO
from urllib.parse import parse_qs, quote, urlsplit

import boto3
import requests
from botocore import xform_name
from botocore.exceptions import ClientError
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from cxr.local import functions, names
from infra import page_policy, wiring
from lambdas.domain import review

COGNITO_ACTIONS = frozenset({"InitiateAuth", "RespondToAuthChallenge", "AssociateSoftwareToken",
                             "VerifySoftwareToken"})
"""What the page calls on Cognito: the unauthenticated sign-in and MFA set-up actions."""
ROUTES = [(route, re.compile("^" + re.escape(route.split(" ", 1)[1]).replace(re.escape("{id}"), "(?P<id>[^/]+)")
                             + "$")) for route in review.ROUTES]


def moto_key_set() -> KeySet:
    """The public keys moto's Cognito signs its tokens with (what ``/.well-known/jwks.json`` serves)."""
    data = resources.files("moto.cognitoidp").joinpath("resources/jwks-public.json.gz").read_bytes()
    return KeySet.import_key_set(json.loads(gzip.decompress(data)))


class Unauthorized(Exception):
    pass


def authorize(header: str | None, issuer: str, audience: str, keys: KeySet, now: float | None = None) -> dict:
    """The JWT authorizer: the token's claims, or :class:`Unauthorized` (API Gateway answers 401 itself)."""
    token = (header or "").removeprefix("Bearer ").strip()
    if not token:
        raise Unauthorized("no token")
    try:
        claims = jwt.decode(token, keys, algorithms=["RS256"]).claims
    except (JoseError, ValueError) as exc:
        raise Unauthorized(f"bad token: {exc}") from None
    if claims.get("iss") != issuer:
        raise Unauthorized("wrong issuer")
    if (claims["aud"] if "aud" in claims else claims.get("client_id")) != audience:  # aud first, as AWS does
        raise Unauthorized("wrong audience")
    if float(claims.get("exp", 0)) <= (time.time() if now is None else now):
        raise Unauthorized("expired")
    return claims


def as_http_api_claims(claims: dict) -> dict[str, str]:
    """Claims as an HTTP API hands them to Lambda: every value a string, an array as ``[a b]``."""
    return {name: "[" + " ".join(map(str, value)) + "]" if isinstance(value, list) else str(value)
            for name, value in claims.items()}


def presign_expired(url: str, now: datetime | None = None) -> bool:
    query = parse_qs(urlsplit(url).query)
    signed = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return ((now or datetime.now(UTC)) - signed).total_seconds() > int(query["X-Amz-Expires"][0])


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A browser that goes away mid-answer (a closed tab) is no error; anything else is reported as usual."""
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class ReviewServer:
    """One server on ``127.0.0.1``; handlers run in this process, against whatever AWS the process sees."""

    def __init__(self, environment: dict[str, str], user_pool_id: str, client_id: str, region: str, log: TextIO,
                 port: int = 0, principal: str | None = None, function_name: str = wiring.REVIEW_API.id):
        """``principal`` and ``function_name``: the role and the offline cloud's name of the function, so that
        its calls and its runtime's are checked against the synthesized policies (:mod:`cxr.local.iam_trace`)."""
        self.environment, self.client_id, self.region, self.log = environment, client_id, region, log
        self.function_name = function_name
        self.issuer = f"https://cognito-idp.{region}.amazonaws.com/{user_pool_id}"
        self.principal, self.keys = principal, moto_key_set()
        self.httpd = _QuietServer(("127.0.0.1", port), self._handler_class())
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="review-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> ReviewServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def config(self) -> dict:
        return {"api": self.url, "region": self.region, "clientId": self.client_id, "cognito": f"{self.url}/cognito/"}

    def call_api(self, method: str, path: str, headers: dict, body: bytes) -> tuple[int, dict]:
        for route, pattern in ROUTES:
            match = pattern.match(path)
            if match and route.startswith(method + " "):
                break
        else:
            return 404, {"message": "Not Found"}
        try:
            claims = authorize(headers.get("authorization"), self.issuer, self.client_id, self.keys)
        except Unauthorized:
            return 401, {"message": "Unauthorized"}
        event = {"version": "2.0", "routeKey": route, "rawPath": path, "pathParameters": match.groupdict() or None,
                 "headers": headers, "requestContext": {"authorizer": {"jwt": {"claims": as_http_api_claims(claims),
                                                                               "scopes": None}}},
                 "body": body.decode() if body else None, "isBase64Encoded": False}
        result, error = functions.run(wiring.REVIEW_API.handler, event, self.environment, self.function_name,
                                      self.log, memory_mb=wiring.REVIEW_API.memory_mb,
                                      timeout_s=wiring.REVIEW_API.timeout_s, principal=self.principal)
        if error:  # API Gateway answers 500 when the integration fails
            return 500, {"message": "Internal Server Error"}
        document = json.loads(result["body"])
        for name in ("image_url", "overlay_url"):
            if name in document:
                document[name] = f"{self.url}/s3?url={quote(document[name], safe='')}"
        return result["statusCode"], document

    def cognito(self, action: str, body: bytes) -> tuple[int, dict]:
        if action not in COGNITO_ACTIONS:
            return 400, {"__type": "NotAuthorizedException", "message": f"{action} is not offered here"}
        client = boto3.client("cognito-idp", region_name=self.region)
        try:
            answer = getattr(client, xform_name(action))(**json.loads(body or b"{}"))
        except ClientError as exc:
            error = exc.response.get("Error", {})
            return 400, {"__type": error.get("Code"), "message": error.get("Message")}
        answer.pop("ResponseMetadata", None)
        return 200, answer

    def object(self, url: str) -> tuple[int, bytes, str]:
        if urlsplit(url).scheme not in ("http", "https") or presign_expired(url):
            return 403, b"Request has expired", "text/plain"
        response = requests.get(url, timeout=30)
        return response.status_code, response.content, response.headers.get("Content-Type", "")

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                server.log.write(f"review server: {format % args}\n")

            def _send(self, status: int, body: bytes, content_type: str, extra: dict | None = None) -> None:
                self.send_response(status)
                for name, value in {"Content-Type": content_type, "Content-Length": str(len(body)),
                                    "Cache-Control": "no-store", **(extra or {})}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status: int, document: dict) -> None:
                self._send(status, json.dumps(document).encode(), "application/json")

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                if path in ("/", "/index.html"):
                    self._send(200, (wiring.REVIEW_PAGE_DIR / "index.html").read_bytes(), "text/html; charset=utf-8",
                               {"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
                                "Content-Security-Policy": page_policy.content_security_policy([])})
                elif path == f"/{wiring.REVIEW_PAGE_CONFIG}":
                    self._json(200, server.config())
                elif path == "/s3":
                    status, body, content_type = server.object(parse_qs(urlsplit(self.path).query)["url"][0])
                    self._send(status, body, content_type, {"Access-Control-Allow-Origin": "*"})
                else:
                    self._json(*server.call_api("GET", path, self._headers(), b""))

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = urlsplit(self.path).path
                if path == "/cognito/":
                    target = self.headers.get("X-Amz-Target", "").rpartition(".")[2]
                    status, document = server.cognito(target, body)
                    self._send(status, json.dumps(document).encode(), "application/x-amz-json-1.1")
                else:
                    self._json(*server.call_api("POST", path, self._headers(), body))

            def _headers(self) -> dict[str, str]:
                return {name.lower(): value for name, value in self.headers.items()}

        return Handler


LOCAL_TEMPORARY_PASSWORD = "Review-2026!"
"""The offline reviewer's first password; the page then asks for a new one and an authenticator code."""


def local_pool(idp, stage: str, email: str) -> tuple[str, str]:
    """The offline cloud's reviewer pool (made once, as the review stack makes it in AWS) with ``email`` invited;
    returns (pool id, client id)."""
    name = f"cxr-{stage}-reviewers"
    pools = [p["Id"] for p in idp.list_user_pools(MaxResults=60)["UserPools"] if p["Name"] == name]
    if pools:
        pool = pools[0]
    else:
        pool = idp.create_user_pool(PoolName=name, MfaConfiguration="ON",
                                    AdminCreateUserConfig={"AllowAdminCreateUserOnly": True})["UserPool"]["Id"]
        idp.set_user_pool_mfa_config(UserPoolId=pool, MfaConfiguration="ON",
                                     SoftwareTokenMfaConfiguration={"Enabled": True})
        idp.create_group(UserPoolId=pool, GroupName=review.REVIEWERS_GROUP)
    clients = idp.list_user_pool_clients(UserPoolId=pool, MaxResults=60)["UserPoolClients"]
    client = clients[0]["ClientId"] if clients else idp.create_user_pool_client(
        UserPoolId=pool, ClientName="page", GenerateSecret=False,
        ExplicitAuthFlows=["ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"])["UserPoolClient"]["ClientId"]
    try:
        idp.admin_create_user(UserPoolId=pool, Username=email, TemporaryPassword=LOCAL_TEMPORARY_PASSWORD)
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "UsernameExistsException":
            raise
    idp.admin_add_user_to_group(UserPoolId=pool, Username=email, GroupName=review.REVIEWERS_GROUP)
    return pool, client


def for_cloud(cloud, email: str, port: int = 0) -> ReviewServer:
    """A review server over an in-process offline cloud (`cxr demo --review`, the end-to-end test): the
    ReviewApi function's environment, its role as the principal of its calls, a reviewer pool with ``email``."""
    idp = boto3.client("cognito-idp", region_name=names.REGION)
    pool, client = local_pool(idp, cloud.config.stage, email)
    return ReviewServer(cloud.environment(wiring.REVIEW_API), pool, client, names.REGION, cloud.lambda_log,
                        port=port, principal=cloud.names.function_role_arn(wiring.REVIEW_API),
                        function_name=cloud.names.function(wiring.REVIEW_API))

