"""Review: the radiologist's page (S3 + CloudFront), its HTTP API (API Gateway v2 + Lambda) and the Cognito pool.

Why CloudFront and not a page served by the API: every API route sits behind the JWT authorizer, and a
browser's first request for a page carries no token, so the page must come from somewhere that needs none.
The page is static code with no data (one HTML file, ``infra/review_page/``); everything it shows comes from
the API with a reviewer's token, and images through presigned URLs of content-named copies.

* Cognito: no self sign-up (``cxr reviewers add EMAIL`` invites), MFA required (TOTP), the ``reviewers``
  group. The page signs in against Cognito's API (``USER_PASSWORD_AUTH`` over TLS, then the TOTP
  challenge) and calls the API with the access token.
* The API's JWT authorizer checks issuer, audience (the page's client id) and expiry on every route; it cannot
  check groups, so the handler does (``lambdas.review_api``). CORS admits the page's origin only.
* CloudFront reaches the page bucket through origin access control (the bucket is private, SSL only) and
  sends security headers and ``Cache-Control: no-store``.
"""

from __future__ import annotations

from aws_cdk import CfnOutput, Duration, RemovalPolicy, Stack
from aws_cdk import aws_apigatewayv2 as apigw
from aws_cdk import aws_apigatewayv2_authorizers as authorizers
from aws_cdk import aws_apigatewayv2_integrations as integrations
from aws_cdk import aws_cloudfront as cloudfront
from aws_cdk import aws_cloudfront_origins as origins
from aws_cdk import aws_cognito as cognito
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_deployment as s3deploy
from aws_cdk import aws_sns as sns
from constructs import Construct

from infra import page_policy, wiring
from infra.components.access import allow_objects
from infra.components.buckets import bucket_name
from infra.components.function import ServiceFunction
from infra.components.nag import acknowledge
from infra.components.retention import retention
from infra.components.tables import allow_items
from infra.config import Config
from lambdas.domain import layout, review

TOKEN_MINUTES = 60
PAGE_CONNECTS = ["https://*.amazonaws.com"]
"""What the page fetches: the API (``execute-api``), Cognito (``cognito-idp``) and presigned S3 URLs; all
``*.amazonaws.com`` hosts of the stage's region, named without a token (the API's URL is only known at deploy
time, and the distribution is created first)."""
SECURITY_HEADERS = cloudfront.ResponseSecurityHeadersBehavior(
    content_type_options=cloudfront.ResponseHeadersContentTypeOptions(override=True),
    frame_options=cloudfront.ResponseHeadersFrameOptions(frame_option=cloudfront.HeadersFrameOption.DENY,
                                                         override=True),
    referrer_policy=cloudfront.ResponseHeadersReferrerPolicy(
        referrer_policy=cloudfront.HeadersReferrerPolicy.NO_REFERRER, override=True),
    strict_transport_security=cloudfront.ResponseHeadersStrictTransportSecurity(
        access_control_max_age=Duration.days(365), include_subdomains=True, override=True),
)


class ReviewStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, *, config: Config, key: kms.IKey, topic: sns.ITopic,
                 review_tasks: dynamodb.ITable, **kwargs):
        super().__init__(scope, construct_id, **kwargs)
        stage = config.stage
        self.user_pool = cognito.UserPool(
            self, "Reviewers", user_pool_name=f"cxr-{stage}-reviewers", self_sign_up_enabled=False,
            sign_in_aliases=cognito.SignInAliases(email=True), auto_verify=cognito.AutoVerifiedAttrs(email=True),
            mfa=cognito.Mfa.REQUIRED, mfa_second_factor=cognito.MfaSecondFactor(otp=True, sms=False),
            password_policy=cognito.PasswordPolicy(min_length=12, require_lowercase=True, require_uppercase=True,
                                                   require_digits=True, require_symbols=True,
                                                   temp_password_validity=Duration.days(3)),
            account_recovery=cognito.AccountRecovery.EMAIL_ONLY,
            feature_plan=cognito.FeaturePlan.PLUS,
            standard_threat_protection_mode=cognito.StandardThreatProtectionMode.FULL_FUNCTION,
            user_invitation=cognito.UserInvitationConfig(
                email_subject="cxr: you are invited to review chest X-rays",
                email_body="Your user name is {username} and your temporary password is {####}. Sign in on the "
                           "review page, choose a new password and set up an authenticator app (MFA is required)."),
            removal_policy=RemovalPolicy.DESTROY,
        )
        cognito.CfnUserPoolGroup(self, "ReviewersGroup", user_pool_id=self.user_pool.user_pool_id,
                                 group_name=review.REVIEWERS_GROUP,
                                 description="May list review tasks, see their X-rays and give verdicts")
        self.client = self.user_pool.add_client(
            "Page", generate_secret=False, disable_o_auth=True, auth_flows=cognito.AuthFlow(user_password=True),
            access_token_validity=Duration.minutes(TOKEN_MINUTES), id_token_validity=Duration.minutes(TOKEN_MINUTES),
            refresh_token_validity=Duration.hours(12), prevent_user_existence_errors=True,
            enable_token_revocation=True)

        self.page_bucket = s3.Bucket(
            self, "PageBucket", encryption=s3.BucketEncryption.S3_MANAGED, enforce_ssl=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED, removal_policy=RemovalPolicy.DESTROY)
        acknowledge(self.page_bucket, "The bucket holds only the review page's code, rebuilt from the repository at "
                    "every deployment (no data, nothing to recover from versions or replicas), and is read only by "
                    "CloudFront through origin access control.",
                    "AwsSolutions-S1", "HIPAA.Security-S3BucketLoggingEnabled",
                    "HIPAA.Security-S3BucketVersioningEnabled", "HIPAA.Security-S3BucketReplicationEnabled",
                    "HIPAA.Security-S3DefaultEncryptionKMS")
        headers = cloudfront.ResponseHeadersPolicy(
            self, "PageHeaders", security_headers_behavior=cloudfront.ResponseSecurityHeadersBehavior(
                **{name: getattr(SECURITY_HEADERS, name) for name in (
                    "content_type_options", "frame_options", "referrer_policy", "strict_transport_security")},
                content_security_policy=cloudfront.ResponseHeadersContentSecurityPolicy(
                    content_security_policy=page_policy.content_security_policy(PAGE_CONNECTS), override=True)),
            custom_headers_behavior=cloudfront.ResponseCustomHeadersBehavior(custom_headers=[
                cloudfront.ResponseCustomHeader(header="Cache-Control", value="no-store", override=True)]))
        self.distribution = cloudfront.Distribution(
            self, "Page", default_root_object="index.html", comment=f"cxr {stage}: review page",
            default_behavior=cloudfront.BehaviorOptions(
                origin=origins.S3BucketOrigin.with_origin_access_control(self.page_bucket),
                viewer_protocol_policy=cloudfront.ViewerProtocolPolicy.REDIRECT_TO_HTTPS,
                cache_policy=cloudfront.CachePolicy.CACHING_DISABLED, response_headers_policy=headers),
            price_class=cloudfront.PriceClass.PRICE_CLASS_100)
        acknowledge(self.distribution, "The distribution serves one static page with no data; who may see data is "
                    "decided by the API (Cognito with MFA, the reviewers group). Geo restriction, a WAF web ACL "
                    "(a fixed monthly fee) and standard logs (which need an ACL-enabled log bucket) are left to the "
                    "organisation; the default *.cloudfront.net certificate fixes the viewer TLS policy.",
                    "AwsSolutions-CFR1", "AwsSolutions-CFR2", "AwsSolutions-CFR3", "AwsSolutions-CFR4")
        self.page_url = f"https://{self.distribution.distribution_domain_name}"

        spec = wiring.REVIEW_API
        self.api_function = ServiceFunction(self, spec, config=config, key=key, alarm_topic=topic, environment={
            wiring.ENV_REVIEW_TASKS_TABLE: review_tasks.table_name,
            wiring.ENV_INFERENCE_BUCKET: bucket_name(wiring.INFERENCE, stage),
            wiring.ENV_DATA_BUCKET: bucket_name(wiring.DATA, stage),
            wiring.ENV_REVIEW_DATASET: config.review_dataset,
        })
        function = self.api_function.function
        acknowledge(function, "Invoked synchronously by API Gateway, which answers the caller on failure; a DLQ "
                    "only receives asynchronous invocations.", "HIPAA.Security-LambdaDLQ")
        # tasks, verdicts and views; the original (any version) and its overlay are copied, never moved
        allow_items(function, review_tasks, key, "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem",
                    "dynamodb:Query")
        allow_items(function, dynamodb.Table.from_table_arn(
            self, "ReviewQueueIndex", f"{review_tasks.table_arn}/index/{wiring.REVIEW_QUEUE_INDEX.name}"), key,
            "dynamodb:Query")
        allow_objects(function, wiring.INFERENCE, stage, key, read=[layout.INCOMING, layout.PREDICTIONS,
                                                                    layout.REVIEW], write=[layout.REVIEW])
        allow_objects(function, wiring.DATA, stage, key, read=[layout.RAW], write=[layout.RAW])

        self.field_monitor = self._field_monitor(config, key, topic, review_tasks)

        authorizer = authorizers.HttpUserPoolAuthorizer("Reviewers", self.user_pool,
                                                        user_pool_clients=[self.client])
        self.api = apigw.HttpApi(
            self, "Api", api_name=f"cxr-{stage}-review", description="cxr: review tasks and verdicts",
            cors_preflight=apigw.CorsPreflightOptions(
                allow_origins=[self.page_url], allow_methods=[apigw.CorsHttpMethod.GET, apigw.CorsHttpMethod.POST],
                allow_headers=["authorization", "content-type"], max_age=Duration.minutes(10)))
        integration = integrations.HttpLambdaIntegration("Handler", function)
        for route in review.ROUTES:
            method, path = route.split(" ", 1)
            self.api.add_routes(path=path, methods=[apigw.HttpMethod(method)], integration=integration,
                                authorizer=authorizer)
        access_log = logs.LogGroup(self, "ApiAccessLog", encryption_key=key,
                                   retention=retention(config.log_retention_days), removal_policy=RemovalPolicy.RETAIN)
        stage_resource = self.api.default_stage.node.default_child
        stage_resource.access_log_settings = apigw.CfnStage.AccessLogSettingsProperty(
            destination_arn=access_log.log_group_arn,
            format='{"requestId":"$context.requestId","time":"$context.requestTime","route":"$context.routeKey",'
                   '"status":"$context.status","sub":"$context.authorizer.claims.sub",'
                   '"error":"$context.authorizer.error","latency":"$context.integrationLatency"}')
        stage_resource.default_route_settings = apigw.CfnStage.RouteSettingsProperty(
            throttling_burst_limit=50, throttling_rate_limit=20)

        s3deploy.BucketDeployment(
            self, "PageFiles", destination_bucket=self.page_bucket, distribution=self.distribution,
            sources=[s3deploy.Source.asset(str(wiring.REVIEW_PAGE_DIR)), s3deploy.Source.json_data(
                wiring.REVIEW_PAGE_CONFIG, {
                "api": self.api.api_endpoint, "region": self.region, "clientId": self.client.user_pool_client_id,
                "cognito": f"https://cognito-idp.{self.region}.amazonaws.com/"})],
            cache_control=[s3deploy.CacheControl.no_store()], memory_limit=256)
        self._acknowledge_page_deployment()
        CfnOutput(self, "PageUrl", value=self.page_url, description="The review page")
        CfnOutput(self, "ApiUrl", value=self.api.api_endpoint)
        CfnOutput(self, "UserPoolId", value=self.user_pool.user_pool_id)

    def _field_monitor(self, config: Config, key: kms.IKey, topic: sns.ITopic,
                       review_tasks: dynamodb.ITable) -> ServiceFunction:
        """The daily estimate of the models' figures on the site's patients (``lambdas.field_monitor``): it scans the
        review table and reads each run's ``reports/<run>/metrics.json``; the monitoring stack alarms on its metric."""
        spec = wiring.FIELD_MONITOR
        monitor = ServiceFunction(self, spec, config=config, key=key, alarm_topic=topic, environment={
            wiring.ENV_REVIEW_TASKS_TABLE: review_tasks.table_name,
            wiring.ENV_REVIEW_SAMPLE_RATE: str(config.review_sample_rate),
            wiring.ENV_DATA_BUCKET: bucket_name(wiring.DATA, config.stage),
        })
        allow_items(monitor.function, review_tasks, key, "dynamodb:Scan")
        allow_objects(monitor.function, wiring.DATA, config.stage, key, read=[layout.REPORTS], list_=[layout.REPORTS])
        events.Rule(self, "FieldMonitorSchedule", schedule=events.Schedule.rate(Duration.hours(spec.schedule_hours)),
                    description=f"cxr {config.stage}: the models' figures on the site's patients, from the reviews",
                    targets=[targets.LambdaFunction(monitor.function)])
        return monitor

    def _acknowledge_page_deployment(self) -> None:
        """CDK's BucketDeployment runs its own provider function, which this stack neither writes nor configures."""
        (provider,) = [c for c in self.node.children if c.node.id.startswith("Custom::CDKBucketDeployment")]
        acknowledge(provider, "CDK's BucketDeployment provider, run by CloudFormation at deployment only: CDK "
                    "writes its role (basic execution policy; asset and page bucket objects; CloudFront "
                    "invalidation, which has no resource-level scope here) and pins its runtime; it is invoked "
                    "synchronously by CloudFormation, touches only the two buckets and needs no VPC.",
                    "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                    "AWSLambdaBasicExecutionRole]",
                    *(f"AwsSolutions-IAM5[{finding}]" for finding in (
                        "Action::s3:GetBucket*", "Action::s3:GetObject*", "Action::s3:List*", "Action::s3:Abort*",
                        "Action::s3:DeleteObject*", "Resource::*",
                        "Resource::arn:<AWS::Partition>:s3:::cdk-hnb659fds-assets-<AWS::AccountId>-<AWS::Region>/*",
                        f"Resource::<{self.get_logical_id(self.page_bucket.node.default_child)}.Arn>/*")),
                    "AwsSolutions-L1", "HIPAA.Security-LambdaConcurrency", "HIPAA.Security-LambdaDLQ",
                    "HIPAA.Security-LambdaInsideVPC")
