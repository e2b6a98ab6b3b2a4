"""`cxr review export`: every verdict as CSV (no keys or file names: they hold patient identifiers).

`cxr review serve --local`: the review page and API on localhost against the running offline cloud
(`cxr local up`), with a reviewer invited into its Cognito pool.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cxr import reviews, target
from cxr.errors import UserError


def register(subparsers) -> None:
    parser = subparsers.add_parser("review", help="radiologists' verdicts: export as CSV",
                                   description=__doc__.splitlines()[0])
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    export = actions.add_parser("export", help="write every verdict as CSV (stdout, or --out FILE)")
    export.add_argument("--out", type=Path, help="write the CSV here instead of standard output")
    target.add_arguments(export)
    export.set_defaults(run=run_export)
    serve = actions.add_parser("serve", help="serve the review page on localhost against the offline cloud (--local)")
    serve.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765)")
    serve.add_argument("--reviewer", default="reviewer@example.org", help="the e-mail to invite (default %(default)s)")
    target.add_arguments(serve)
    serve.set_defaults(run=run_serve)


def run_export(args) -> int:
    deployment = target.resolve(args)
    rows = reviews.verdict_rows(reviews.items(deployment, reviews.review_table(deployment)))
    text = reviews.to_csv(rows)
    if args.out:
        args.out.write_text(text)
        print(f"{len(rows)} verdict(s) written to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def run_serve(args) -> int:
    """Until interrupted; the handler runs in this process against the offline cloud's moto server."""
    if not args.local:
        raise UserError("in AWS the page is served by CloudFront: `cxr deploy` prints its address; add --local")
    deployment = target.resolve(args)
    os.environ.update({"AWS_ENDPOINT_URL": deployment.endpoint_url, "AWS_ACCESS_KEY_ID": "local",
                       "AWS_SECRET_ACCESS_KEY": "local", "AWS_REGION": deployment.region,
                       "AWS_DEFAULT_REGION": deployment.region})
    from cxr.local import review_server
    from cxr.local.names import LocalNames
    from infra import wiring

    pool, client = review_server.local_pool(deployment.client("cognito-idp"), deployment.stage, args.reviewer)
    environment = deployment.client("lambda").get_function_configuration(
        FunctionName=LocalNames(deployment.stage).function(wiring.REVIEW_API))["Environment"]["Variables"]
    server = review_server.ReviewServer(environment, pool, client, deployment.region, sys.stderr, port=args.port)
    with server:
        print(f"review page: {server.url}  (sign in as {args.reviewer}, first password "
              f"{review_server.LOCAL_TEMPORARY_PASSWORD}; the offline cloud accepts any 6-digit authenticator code)",
              flush=True)
        try:
            while server.thread.is_alive():  # a join with a timeout lets Ctrl-C through
                server.thread.join(0.5)
        except KeyboardInterrupt:
            pass
    return 0
