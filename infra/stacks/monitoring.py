"""Monitoring: one dashboard for the whole flow and alarms to the notification topic."""

from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_sns as sns
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from infra import wiring
from infra.components.function import ServiceFunction
from infra.config import Config
from lambdas import field_monitor

PERIOD = Duration.minutes(5)
OOD_PERIOD = Duration.hours(1)
OOD_RATE_ALARM = 0.10
"""Out-of-distribution share of an hour's predictions that alarms: the guard is fitted to flag at most 2 %
of in-distribution X-rays (``training_job/ood.py``), so a tenth means wrong inputs or a shifted source."""
OOD_MIN_PREDICTIONS = 20
"""Fewer predictions in the hour give no rate (one odd upload out of three is not a trend)."""


def _app_metric(name: str, service: str, statistic: str = "Sum", label: str | None = None) -> cloudwatch.Metric:
    """A Powertools metric: namespace and ``service`` dimension as the handlers emit them."""
    return cloudwatch.Metric(namespace=wiring.METRICS_NAMESPACE, metric_name=name,
                             dimensions_map={"service": service}, statistic=statistic, period=PERIOD,
                             label=label or name)


def _endpoint_metric(name: str, endpoint: str, statistic: str = "Sum") -> cloudwatch.Metric:
    return cloudwatch.Metric(namespace="AWS/SageMaker", metric_name=name, statistic=statistic, period=PERIOD,
                             dimensions_map={"EndpointName": endpoint, "VariantName": "AllTraffic"})


def out_of_distribution_rate(service: str) -> cloudwatch.MathExpression:
    """Out-of-distribution predictions per prediction over an hour, 0 below ``OOD_MIN_PREDICTIONS``
    (metric math ``IF(condition, trueValue, falseValue)``, CloudWatch user guide, "Using math expressions
    with CloudWatch metrics")."""
    return cloudwatch.MathExpression(
        expression=f"IF(predictions >= {OOD_MIN_PREDICTIONS}, ood / predictions, 0)", period=OOD_PERIOD,
        label="out-of-distribution rate",
        using_metrics={"ood": _app_metric("OutOfDistribution", service).with_(period=OOD_PERIOD),
                       "predictions": _app_metric("Predictions", service).with_(period=OOD_PERIOD)})


def field_figures_below(service: str) -> cloudwatch.Metric:
    """How many measures of the recent models fall below their own figures on the site's patients (the daily
    ``lambdas.field_monitor``); the day's highest reading."""
    return cloudwatch.Metric(namespace=wiring.METRICS_NAMESPACE, metric_name=field_monitor.METRIC,
                             dimensions_map={"service": service}, statistic="Maximum", period=Duration.days(1),
                             label="measures below the model's own figures")


REVIEW_PERIOD = Duration.days(1)
COMPARABLE_VERDICTS = ("normal", "bacterial", "viral", "pneumonia_unspecified")
"""``lambdas.domain.review.VERDICTS`` but ``not_assessable``, which compares nothing."""


def review_agreement_widget() -> cloudwatch.GraphWidget:
    """Model vs reviewer agreement per day, per verdict class and overall (``lambdas.review_api.publish``)."""
    def metric(name: str, verdict: str) -> cloudwatch.Metric:
        return cloudwatch.Metric(namespace=wiring.METRICS_NAMESPACE, metric_name=name, statistic="Sum",
                                 period=REVIEW_PERIOD, dimensions_map={"service": wiring.REVIEW_API.service,
                                                                      "verdict": verdict})
    agree = {f"a{i}": metric("ReviewAgreements", v) for i, v in enumerate(COMPARABLE_VERDICTS)}
    compared = {f"c{i}": metric("ReviewComparable", v) for i, v in enumerate(COMPARABLE_VERDICTS)}
    lines = [cloudwatch.MathExpression(expression=f"a{i} / c{i}", label=verdict, period=REVIEW_PERIOD,
                                       using_metrics={f"a{i}": agree[f"a{i}"], f"c{i}": compared[f"c{i}"]})
             for i, verdict in enumerate(COMPARABLE_VERDICTS)]
    lines.append(cloudwatch.MathExpression(
        expression=f"({' + '.join(agree)}) / ({' + '.join(compared)})", label="all verdicts",
        period=REVIEW_PERIOD, using_metrics={**agree, **compared}))
    return cloudwatch.GraphWidget(title="Model vs reviewer agreement (daily)", width=24, left=lines,
                                  left_y_axis=cloudwatch.YAxisProps(min=0, max=1))


class MonitoringStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, *, config: Config, topic: sns.ITopic,
                 functions: list[ServiceFunction], state_machine: sfn.IStateMachine, **kwargs):
        super().__init__(scope, construct_id, **kwargs)
        endpoint = wiring.endpoint_name(config.stage)
        preprocess, predict = wiring.PREPROCESS.service, wiring.PREDICT.service
        action = cw_actions.SnsAction(topic)

        def alarm(construct_id: str, metric: cloudwatch.IMetric, description: str) -> cloudwatch.Alarm:
            created = metric.create_alarm(self, construct_id, threshold=1, evaluation_periods=1,
                                          treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
                                          comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                                          alarm_description=description)
            created.add_alarm_action(action)
            return created

        self.alarms = [
            alarm("PipelineFailed", state_machine.metric_failed(period=PERIOD),
                  "A training pipeline run failed; nothing was deployed"),
            alarm("PipelineTimedOut", state_machine.metric_timed_out(period=PERIOD),
                  "A training pipeline run timed out; nothing was deployed"),
            alarm("EndpointErrors", _endpoint_metric("Invocation5XXErrors", endpoint),
                  "The endpoint answered with server errors"),
        ]
        self.alarms.append(out_of_distribution_rate(predict).create_alarm(
            self, "OutOfDistributionRate", threshold=OOD_RATE_ALARM, evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            alarm_description=f"Over {OOD_RATE_ALARM:.0%} of an hour's predictions were inputs unlike the training "
                              "X-rays (out-of-distribution referrals): wrong uploads or a new acquisition source"))
        self.alarms[-1].add_alarm_action(action)
        self.alarms.append(field_figures_below(wiring.FIELD_MONITOR.service).create_alarm(
            self, "FieldFiguresBelowModel", threshold=1, evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            alarm_description="On this site's reviewed patients, a recent model's sensitivity, specificity or "
                              "bacterial-vs-viral accuracy is below what it was measured at (the two 95 % intervals "
                              "do not meet): its figures do not describe these X-rays; `cxr status` shows them."))
        self.alarms[-1].add_alarm_action(action)
        dashboard = cloudwatch.Dashboard(self, "Dashboard", dashboard_name=f"cxr-{config.stage}",
                                         default_interval=Duration.days(1))
        dashboard.add_widgets(
            cloudwatch.GraphWidget(title="Uploads", width=8, left=[
                next(f for f in functions if f.spec is wiring.PREPROCESS).function.metric_invocations(
                    period=PERIOD, label="S3 events"),
                _app_metric("ImagesAccepted", preprocess, label="accepted"),
                _app_metric("ImagesRejected", preprocess, label="rejected (quarantine)"),
                _app_metric("ImagesRemoved", preprocess, label="removed (key deleted)"),
                _app_metric("DuplicateEvents", preprocess, label="duplicate deliveries"),
                _app_metric("SupersededEvents", preprocess, label="superseded (a newer version decides)"),
            ]),
            cloudwatch.GraphWidget(title="Predictions", width=8, left=[
                _app_metric("Predictions", predict, label="predicted"),
                _app_metric("PredictionsRejected", predict, label="rejected input"),
                _app_metric("DuplicateEvents", predict, label="duplicate deliveries"),
                _app_metric("SupersededEvents", predict, label="superseded (a newer version decides)"),
                _app_metric("OutOfDistribution", predict, label="out of distribution (referred)"),
            ]),
            cloudwatch.GraphWidget(title="Predict latency (ms)", width=8, left=[
                _app_metric("PredictLatency", predict, "p50", "p50"),
                _app_metric("PredictLatency", predict, "p90", "p90"),
                _endpoint_metric("ModelLatency", endpoint, "p50").with_(label="model p50 (us)"),
            ]),
        )
        dashboard.add_widgets(
            cloudwatch.GraphWidget(title=f"Endpoint {endpoint}", width=8, left=[
                _endpoint_metric("Invocations", endpoint),
                _endpoint_metric("Invocation4XXErrors", endpoint),
                _endpoint_metric("Invocation5XXErrors", endpoint),
            ]),
            cloudwatch.GraphWidget(title="Training pipeline runs", width=8, left=[
                state_machine.metric_started(period=PERIOD, label="started"),
                state_machine.metric_succeeded(period=PERIOD, label="succeeded"),
                state_machine.metric_failed(period=PERIOD, label="failed"),
                state_machine.metric_timed_out(period=PERIOD, label="timed out"),
            ]),
            cloudwatch.GraphWidget(title="Function errors", width=8, left=[
                f.function.metric_errors(period=PERIOD, label=f.spec.id) for f in functions
            ]),
            review_agreement_widget(),
            cloudwatch.GraphWidget(title="Measures below the model's own figures on this site's patients (daily)",
                                   width=24, left=[field_figures_below(wiring.FIELD_MONITOR.service)]),
            cloudwatch.AlarmStatusWidget(title="Alarms", width=24, alarms=[
                *self.alarms, *(f.errors_alarm for f in functions),
            ]),
        )
