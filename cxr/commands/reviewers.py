"""`cxr reviewers add EMAIL`: invite a radiologist to the review page (Cognito sends the temporary password).

The pool takes no sign-ups: an invited reviewer chooses a password and sets up an authenticator app (MFA is
required) at the first sign-in. Membership of the ``reviewers`` group is what the review API checks.
"""

from __future__ import annotations

from botocore.exceptions import ClientError

from cxr import target
from cxr.errors import UserError
from infra import wiring
from lambdas.domain import review

PART = "Review"


def register(subparsers) -> None:
    parser = subparsers.add_parser("reviewers", help="invite radiologists to the review page",
                                   description=__doc__.splitlines()[0])
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="invite EMAIL (an e-mail with a temporary password) into the reviewers group")
    add.add_argument("email")
    target.add_arguments(add)
    add.set_defaults(run=run_add)


def page_url(tgt: target.Target) -> str | None:
    """The review page's address (the review stack's ``PageUrl`` output), or None when it is not deployed."""
    try:
        stacks = tgt.client("cloudformation").describe_stacks(StackName=wiring.stack_name(tgt.stage, PART))["Stacks"]
    except ClientError:
        return None
    outputs = {o["OutputKey"]: o["OutputValue"] for stack in stacks for o in stack.get("Outputs", [])}
    return outputs.get("PageUrl")


def run_add(args) -> int:
    tgt = target.resolve(args)
    if tgt.is_local:
        raise UserError("the offline cloud has no user pool yet: its review page is not served (see README)")
    pool = tgt.stack_resource(PART, "AWS::Cognito::UserPool")
    idp = tgt.client("cognito-idp")
    try:
        idp.admin_create_user(UserPoolId=pool, Username=args.email, DesiredDeliveryMediums=["EMAIL"],
                              UserAttributes=[{"Name": "email", "Value": args.email},
                                              {"Name": "email_verified", "Value": "true"}])
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "UsernameExistsException":
            raise UserError(f"Cognito refused {args.email}: {exc.response['Error'].get('Message')}") from None
        print(f"{args.email} already has an account")
    idp.admin_add_user_to_group(UserPoolId=pool, Username=args.email, GroupName=review.REVIEWERS_GROUP)
    print(f"invited {args.email} to the {review.REVIEWERS_GROUP!r} group; review page: {page_url(tgt) or 'unknown'}")
    return 0
