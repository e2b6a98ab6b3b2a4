"""The offline cloud's IAM evaluator against AWS's documented evaluation rules."""

import pytest

from cxr.local.iam_policy import Policy, Request, UnsupportedPolicy, conditions_hold, evaluate, without_action

ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/cxr-dev-Predict-Role"
BUCKET = "arn:aws:s3:::cxr-dev-data"


def policy(*statements: dict) -> Policy:
    return Policy("test policy", {"Version": "2012-10-17", "Statement": list(statements)})


def allow(action, resource="*", **extra) -> dict:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


def decide(action: str, resource: str, *policies: Policy, resource_policy: Policy | None = None,
           key_policy: bool = False, **context) -> bool:
    request = Request(ROLE, action, resource, context)
    return evaluate(request, list(policies), resource_policy, account=ACCOUNT, key_policy=key_policy).allowed


def test_nothing_is_allowed_by_default():
    assert not decide("s3:GetObject", f"{BUCKET}/raw/a.png")


def test_action_wildcards_ignore_case_resource_wildcards_do_not():
    granted = policy(allow("S3:Get*", f"{BUCKET}/raw/*"))
    assert decide("s3:GetObject", f"{BUCKET}/raw/x/y.png", granted)
    assert decide("s3:GetObjectVersion", f"{BUCKET}/raw/a.png", granted)
    assert not decide("s3:PutObject", f"{BUCKET}/raw/a.png", granted)
    assert not decide("s3:GetObject", f"{BUCKET}/RAW/a.png", granted)
    assert not decide("s3:GetObject", f"{BUCKET}/processed/a.png", granted)


def test_question_mark_matches_exactly_one_character():
    granted = policy(allow("sagemaker:DescribeEndpoint", "arn:aws:sagemaker:us-east-1:1:endpoint/cxr-?"))
    assert decide("sagemaker:DescribeEndpoint", "arn:aws:sagemaker:us-east-1:1:endpoint/cxr-a", granted)
    assert not decide("sagemaker:DescribeEndpoint", "arn:aws:sagemaker:us-east-1:1:endpoint/cxr-ab", granted)


def test_an_explicit_deny_wins_over_any_allow():
    granted = policy(allow("s3:*", f"{BUCKET}/*"))
    denied = policy({"Effect": "Deny", "Action": "s3:PutObject", "Resource": f"{BUCKET}/models/*"})
    assert not decide("s3:PutObject", f"{BUCKET}/models/m.tar.gz", granted, denied)
    assert decide("s3:PutObject", f"{BUCKET}/reports/r.json", granted, denied)


def test_not_action_and_not_resource_allow_everything_else():
    granted = policy({"Effect": "Allow", "NotAction": "s3:Delete*", "NotResource": f"{BUCKET}/raw/*"})
    assert decide("s3:PutObject", f"{BUCKET}/models/m", granted)
    assert not decide("s3:DeleteObject", f"{BUCKET}/models/m", granted)
    assert not decide("s3:PutObject", f"{BUCKET}/raw/m", granted)


def test_string_like_prefix_condition_on_list_bucket():
    granted = policy(allow("s3:ListBucket", BUCKET, Condition={"StringLike": {"s3:prefix": ["processed/*"]}}))
    assert decide("s3:ListBucket", BUCKET, granted, **{"s3:prefix": "processed/synth/"})
    assert not decide("s3:ListBucket", BUCKET, granted, **{"s3:prefix": "raw/"})
    assert not decide("s3:ListBucket", BUCKET, granted)  # no prefix in the request: the key is missing


def test_condition_keys_are_case_insensitive_and_values_are_ored_keys_anded():
    condition = {"StringEquals": {"iam:PassedToService": ["sagemaker.amazonaws.com", "lambda.amazonaws.com"],
                                  "aws:SourceAccount": ACCOUNT}}
    assert conditions_hold(condition, {"IAM:passedToService": "lambda.amazonaws.com", "aws:SourceAccount": ACCOUNT})
    assert not conditions_hold(condition, {"iam:PassedToService": "lambda.amazonaws.com"})
    assert not conditions_hold(condition, {"iam:PassedToService": "ec2.amazonaws.com", "aws:SourceAccount": ACCOUNT})


@pytest.mark.parametrize(("condition", "context", "holds"), [
    ({"Bool": {"kms:GrantIsForAWSResource": "true"}}, {"kms:GrantIsForAWSResource": "true"}, True),
    ({"Bool": {"kms:GrantIsForAWSResource": "true"}}, {"kms:GrantIsForAWSResource": "false"}, False),
    ({"Bool": {"kms:GrantIsForAWSResource": "true"}}, {}, False),
    ({"BoolIfExists": {"aws:MultiFactorAuthPresent": "true"}}, {}, True),
    ({"ArnLike": {"aws:SourceArn": "arn:aws:states:us-east-1:1:stateMachine:*"}},
     {"aws:SourceArn": "arn:aws:states:us-east-1:1:stateMachine:cxr-dev-TrainingPipeline"}, True),
    ({"ArnLike": {"aws:SourceArn": "arn:aws:states:us-east-1:1:stateMachine:*"}},
     {"aws:SourceArn": "arn:aws:states:eu-west-1:1:stateMachine:x"}, False),
    ({"StringNotEquals": {"aws:SourceAccount": "1"}}, {}, True),
    ({"StringNotEquals": {"aws:SourceAccount": "1"}}, {"aws:SourceAccount": "1"}, False),
    ({"StringNotLike": {"s3:prefix": "raw/*"}}, {"s3:prefix": "processed/"}, True),
    ({"NumericLessThan": {"s3:TlsVersion": 1.2}}, {"s3:TlsVersion": "1.3"}, False),
    ({"NumericLessThan": {"s3:TlsVersion": 1.2}}, {"s3:TlsVersion": "1.0"}, True),
    ({"Null": {"s3:prefix": "true"}}, {}, True),
    ({"Null": {"s3:prefix": "false"}}, {}, False),
    ({"ForAnyValue:StringLike": {"aws:TagKeys": ["cxr:*"]}}, {"aws:TagKeys": ("run_id", "cxr:endpoint")}, True),
    ({"ForAllValues:StringLike": {"aws:TagKeys": ["cxr:*"]}}, {"aws:TagKeys": ("run_id", "cxr:endpoint")}, False),
    ({"ForAllValues:StringLike": {"aws:TagKeys": ["cxr:*"]}}, {}, True),  # AWS: an absent set holds
    ({"ForAnyValue:StringLike": {"aws:TagKeys": ["cxr:*"]}}, {}, False),
])
def test_condition_operators(condition, context, holds):
    assert conditions_hold(condition, context) is holds


def test_a_key_policy_must_allow_the_role_or_delegate_to_the_account():
    key = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/k"
    identity = policy(allow("kms:Decrypt", key))
    delegating = Policy("key policy", {"Statement": [
        {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "kms:*", "Resource": "*"}]})
    naming_role = Policy("key policy", {"Statement": [
        {"Effect": "Allow", "Principal": {"AWS": ROLE}, "Action": "kms:Decrypt", "Resource": "*"}]})
    services_only = Policy("key policy", {"Statement": [
        {"Effect": "Allow", "Principal": {"Service": "logs.amazonaws.com"}, "Action": "kms:*", "Resource": "*"}]})
    assert decide("kms:Decrypt", key, identity, resource_policy=delegating, key_policy=True)
    assert not decide("kms:Decrypt", key, resource_policy=delegating, key_policy=True)  # the account defers to IAM
    assert decide("kms:Decrypt", key, resource_policy=naming_role, key_policy=True)  # the key policy alone suffices
    assert not decide("kms:Decrypt", key, identity, resource_policy=services_only, key_policy=True)


def test_a_bucket_policy_deny_applies_to_the_role_and_its_allow_suffices():
    ssl_only = Policy("bucket policy", {"Statement": [
        {"Effect": "Deny", "Principal": {"AWS": "*"}, "Action": "s3:*", "Resource": [BUCKET, f"{BUCKET}/*"],
         "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
        {"Effect": "Allow", "Principal": {"AWS": ROLE}, "Action": "s3:GetObject", "Resource": f"{BUCKET}/shared/*"}]})
    granted = policy(allow("s3:PutObject", f"{BUCKET}/*"))
    assert decide("s3:PutObject", f"{BUCKET}/a", granted, resource_policy=ssl_only, **{"aws:SecureTransport": "true"})
    assert not decide("s3:PutObject", f"{BUCKET}/a", granted, resource_policy=ssl_only,
                      **{"aws:SecureTransport": "false"})
    assert decide("s3:GetObject", f"{BUCKET}/shared/a", resource_policy=ssl_only, **{"aws:SecureTransport": "true"})


def test_what_the_evaluator_cannot_read_raises_instead_of_passing():
    with pytest.raises(UnsupportedPolicy):
        decide("s3:GetObject", f"{BUCKET}/a", policy(allow("s3:GetObject", BUCKET + "/${aws:username}/*")))
    with pytest.raises(UnsupportedPolicy):
        conditions_hold({"StringMatchesRegex": {"s3:prefix": ".*"}}, {"s3:prefix": "a"})
    with pytest.raises(UnsupportedPolicy):
        decide("s3:GetObject", f"{BUCKET}/a", resource_policy=Policy("p", {"Statement": [
            {"Effect": "Deny", "NotPrincipal": {"AWS": ROLE}, "Action": "s3:*", "Resource": "*"}]}))


def test_without_action_takes_a_permission_out_wherever_it_is_granted():
    statements = [allow(["s3:GetObject", "s3:PutObject"], f"{BUCKET}/*"), allow("kms:GenerateDataKey*", "*"),
                  {"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"},
                  {"Effect": "Deny", "Action": "s3:PutObject", "Resource": f"{BUCKET}/raw/*"}]
    stripped = policy(*without_action(statements, "s3:PutObject"))
    assert not decide("s3:PutObject", f"{BUCKET}/models/m", stripped)
    assert decide("s3:GetObject", f"{BUCKET}/models/m", stripped)
    assert not decide("kms:GenerateDataKey", "k", policy(*without_action(statements, "kms:GenerateDataKey")))
    assert stripped.statements[-1]["Effect"] == "Deny"  # denies are kept
