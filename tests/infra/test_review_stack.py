"""CDK assertions on the review stack: every API route behind the Cognito JWT authorizer, the user pool's
settings, the page's bucket reachable only through CloudFront, CORS for the page's origin only."""

from __future__ import annotations

import json

import pytest
from aws_cdk.assertions import Match, Template

from infra import page_policy, wiring
from lambdas.domain import layout, review

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def template(synth):
    return Template.from_json(synth.template("review"))


def one(template: Template, type_: str) -> tuple[str, dict]:
    (found,) = template.find_resources(type_).items()
    return found


def test_every_route_is_a_review_route_behind_the_jwt_authorizer(template):
    authorizer_id, authorizer = one(template, "AWS::ApiGatewayV2::Authorizer")
    pool_id, _ = one(template, "AWS::Cognito::UserPool")
    client_id, _ = one(template, "AWS::Cognito::UserPoolClient")
    assert authorizer["Properties"]["AuthorizerType"] == "JWT"
    jwt = authorizer["Properties"]["JwtConfiguration"]
    assert jwt["Audience"] == [{"Ref": client_id}]
    issuer = json.dumps(jwt["Issuer"])
    assert "https://cognito-idp." in issuer and pool_id in issuer
    routes = template.find_resources("AWS::ApiGatewayV2::Route")
    assert sorted(r["Properties"]["RouteKey"] for r in routes.values()) == sorted(review.ROUTES)
    for route in routes.values():
        assert route["Properties"]["AuthorizationType"] == "JWT"
        assert route["Properties"]["AuthorizerId"] == {"Ref": authorizer_id}


def test_the_user_pool_takes_no_sign_ups_and_requires_mfa(template):
    _, pool = one(template, "AWS::Cognito::UserPool")
    properties = pool["Properties"]
    assert properties["AdminCreateUserConfig"]["AllowAdminCreateUserOnly"] is True
    assert properties["MfaConfiguration"] == "ON" and properties["EnabledMfas"] == ["SOFTWARE_TOKEN_MFA"]
    assert properties["Policies"]["PasswordPolicy"]["MinimumLength"] >= 12
    template.has_resource_properties("AWS::Cognito::UserPoolGroup", {"GroupName": review.REVIEWERS_GROUP})
    _, client = one(template, "AWS::Cognito::UserPoolClient")
    assert client["Properties"]["GenerateSecret"] is False
    assert client["Properties"]["AllowedOAuthFlowsUserPoolClient"] is False  # no implicit flow, no hosted UI


def test_the_page_bucket_is_private_and_read_only_by_its_distribution(template):
    bucket_id, bucket = one(template, "AWS::S3::Bucket")
    assert bucket["Properties"]["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True, "RestrictPublicBuckets": True}
    _, policy = one(template, "AWS::S3::BucketPolicy")
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    allows = [s for s in statements if s["Effect"] == "Allow"]
    distribution_id, distribution = one(template, "AWS::CloudFront::Distribution")
    assert len(allows) == 1 and allows[0]["Principal"] == {"Service": "cloudfront.amazonaws.com"}
    assert allows[0]["Action"] == "s3:GetObject" and distribution_id in json.dumps(allows[0]["Condition"])
    assert any(s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
               for s in statements)
    config = distribution["Properties"]["DistributionConfig"]
    assert config["DefaultCacheBehavior"]["ViewerProtocolPolicy"] == "redirect-to-https"
    (origin,) = config["Origins"]
    assert "OriginAccessControlId" in origin and bucket_id in json.dumps(origin["DomainName"])
    template.has_resource_properties("AWS::CloudFront::ResponseHeadersPolicy", {"ResponseHeadersPolicyConfig": {
        "CustomHeadersConfig": {"Items": [{"Header": "Cache-Control", "Value": "no-store", "Override": True}]}}})
    _, headers = one(template, "AWS::CloudFront::ResponseHeadersPolicy")
    policy = headers["Properties"]["ResponseHeadersPolicyConfig"]["SecurityHeadersConfig"]["ContentSecurityPolicy"]
    html = (wiring.REVIEW_PAGE_DIR / "index.html").read_text()
    assert "default-src 'none'" in policy["ContentSecurityPolicy"] and "unsafe-inline'" not in policy[
        "ContentSecurityPolicy"].split("script-src")[1].split(";")[0]
    assert page_policy.script_hashes(html)[0] in policy["ContentSecurityPolicy"]


def test_cors_admits_the_pages_origin_only(template, synth):
    distribution_id, _ = one(template, "AWS::CloudFront::Distribution")
    _, api = one(template, "AWS::ApiGatewayV2::Api")
    (origin,) = api["Properties"]["CorsConfiguration"]["AllowOrigins"]
    assert origin == {"Fn::Join": ["", ["https://", {"Fn::GetAtt": [distribution_id, "DomainName"]}]]}
    # the review copies' bucket: GET only, no credentials (a presigned URL is the credential)
    inference = [b for b in synth.resources("AWS::S3::Bucket", "storage").values()
                 if "CorsConfiguration" in b["Properties"]]
    (rule,) = inference[0]["Properties"]["CorsConfiguration"]["CorsRules"]
    assert rule["AllowedMethods"] == ["GET"] and "AllowedHeaders" not in rule


def test_the_review_function_may_copy_into_raw_and_review_but_delete_nothing(synth):
    policies = {k: v for k, v in synth.resources("AWS::IAM::Policy", "review").items() if "ReviewApi" in k}
    actions = {a for p in policies.values() for s in p["Properties"]["PolicyDocument"]["Statement"]
               for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    assert "s3:PutObject" in actions and not any(a.startswith("s3:Delete") for a in actions)
    text = json.dumps(policies)
    for prefix in (layout.RAW, layout.REVIEW, layout.INCOMING, layout.PREDICTIONS):
        assert f"/{prefix}*" in text
    Template.from_json(synth.template("review")).has_resource_properties("AWS::Lambda::Function", {
        "Handler": wiring.REVIEW_API.handler,
        "Environment": {"Variables": Match.object_like({wiring.ENV_REVIEW_DATASET: "reviewed"})}})


def test_the_dashboard_shows_model_vs_reviewer_agreement(synth):
    (dashboard,) = synth.resources("AWS::CloudWatch::Dashboard", "monitoring").values()
    body = json.dumps(dashboard["Properties"]["DashboardBody"])
    assert "Model vs reviewer agreement" in body and "ReviewAgreements" in body and "ReviewComparable" in body
    assert wiring.REVIEW_API.service in body


def test_the_field_monitor_runs_daily_reads_only_what_it_needs_and_is_alarmed_on(template, synth):
    """The daily estimate of the models' figures on the site's patients: a schedule invokes it, its role scans the
    review table and reads (and lists) only ``reports/``, and the monitoring stack alarms on its metric."""
    functions = {lid: f for lid, f in template.find_resources("AWS::Lambda::Function").items()
                 if f["Properties"]["Handler"] == wiring.FIELD_MONITOR.handler}
    (function_id,) = functions
    rule_id, rule = one(template, "AWS::Events::Rule")
    assert rule["Properties"]["ScheduleExpression"] == "rate(1 day)"
    assert rule["Properties"]["Targets"][0]["Arn"] == {"Fn::GetAtt": [function_id, "Arn"]}
    template.has_resource_properties("AWS::Lambda::Permission", {
        "Action": "lambda:InvokeFunction", "Principal": "events.amazonaws.com",
        "SourceArn": {"Fn::GetAtt": [rule_id, "Arn"]}})
    role = functions[function_id]["Properties"]["Role"]["Fn::GetAtt"][0]
    (policy,) = [p for p in template.find_resources("AWS::IAM::Policy").values()
                 if {"Ref": role} in p["Properties"]["Roles"]]
    actions = {a for s in policy["Properties"]["PolicyDocument"]["Statement"]
               for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    assert {"dynamodb:Scan", "s3:GetObject", "s3:ListBucket"} <= actions
    assert not {a for a in actions if a.startswith(("dynamodb:Put", "dynamodb:Update", "dynamodb:Delete", "s3:Put",
                                                    "s3:Delete", "sns:", "sagemaker:"))}
    documents = json.dumps(policy["Properties"]["PolicyDocument"])
    assert f"/{layout.REPORTS}*" in documents and f"/{layout.RAW}" not in documents
    alarms = synth.resources("AWS::CloudWatch::Alarm", "monitoring")
    (alarm,) = [a["Properties"] for a in alarms.values() if "FieldMeasuresBelowModelFigure" in json.dumps(a)]
    (stat,) = [m["MetricStat"] for m in alarm["Metrics"]]
    assert stat["Metric"]["Dimensions"] == [{"Name": "service", "Value": wiring.FIELD_MONITOR.service}]
    assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (1, "GreaterThanOrEqualToThreshold")
    assert (stat["Stat"], stat["Period"]) == ("Maximum", 86400)
    assert alarm["AlarmActions"] and alarm["TreatMissingData"] == "notBreaching"
