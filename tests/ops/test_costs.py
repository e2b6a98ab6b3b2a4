"""The cost model's arithmetic (pure functions) and `cxr cost` end to end on the committed measurement."""

import json
from pathlib import Path

import pytest

from cxr import costs
from cxr.cli import main
from cxr.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
LATENCY = costs.Latency(endpoint_ms=20.0, normalise_ms=10.0, request_bytes=20_000, response_bytes=400,
                        source="test")


def flat(value: float) -> costs.Price:
    return costs.Price(value=value, unit="test", as_of="2025-01", source="https://example.invalid")


PRICES = {
    "sagemaker_serverless_gb_second": flat(0.00002),
    "sagemaker_serverless_data_gb": flat(0.016),
    "sagemaker_hosting_hour.ml.c6i.large": flat(0.102),
    "sagemaker_training_hour.ml.g4dn.xlarge": flat(0.7364),
    "sagemaker_spot_saving": flat(0.7),
    "lambda_request": flat(0.2e-6),
    "lambda_gb_second.x86_64": flat(0.0000166667),
    "lambda_gb_second.arm64": flat(0.0000133334),
    "s3_put_request": flat(0.005 / 1000),
    "s3_get_request": flat(0.0004 / 1000),
    "dynamodb_write_request_unit": flat(0.625e-6),
    "rekognition_custom_labels_inference_unit_hour": flat(4.0),
    "vertex_automl_image_node_hour": flat(1.375),
}


def inputs(**overrides) -> costs.Inputs:
    values = dict(per_month=10_000, endpoint_mode="serverless", serverless_memory_mb=3072,
                  endpoint_instance_type="ml.c6i.large", training_instance_type="ml.g4dn.xlarge",
                  training_hours=2.0, training_spot=True,
                  lambda_memory_mb=2048, lambda_architecture="x86_64", latency=LATENCY)
    return costs.Inputs(**(values | overrides))


def test_serverless_endpoint_bills_memory_times_measured_duration_and_bytes():
    items = costs.serverless_per_prediction(PRICES, 3072, LATENCY)
    assert items["endpoint compute"] == pytest.approx(3 * 0.020 * 0.00002)
    assert items["endpoint data"] == pytest.approx(20_400 / 1024**3 * 0.016)


def test_predict_lambda_is_billed_while_it_normalises_and_waits_for_the_endpoint():
    items = costs.predict_path_per_prediction(PRICES, inputs())
    assert items["lambda requests"] == pytest.approx(2 * 0.2e-6)  # the upload's event and its .names pointer's
    assert items["lambda compute"] == pytest.approx(2 * 0.030 * 0.0000166667)
    assert items["s3 requests"] == pytest.approx(3 * 0.005 / 1000 + 2 * 0.0004 / 1000)  # PUTs: upload, pointer, JSON
    assert items["dynamodb writes"] == pytest.approx(7 * 0.625e-6)
    arm = costs.predict_path_per_prediction(PRICES, inputs(lambda_architecture="arm64"))
    assert arm["lambda compute"] == pytest.approx(2 * 0.030 * 0.0000133334)


def test_pay_per_use_scales_with_volume_and_always_on_does_not():
    small, large = (costs.serving_estimates(PRICES, inputs(per_month=n)) for n in (1_000, 100_000))
    by_name = {e.name: (s, e) for s, e in zip(small, large, strict=True)}
    serverless_small, serverless_large = by_name["cxr, serverless endpoint"]
    assert serverless_small.per_1000 == pytest.approx(serverless_large.per_1000)
    assert serverless_large.per_month == pytest.approx(100 * serverless_small.per_month)
    for name in ("Rekognition Custom Labels", "Vertex AI AutoML image"):
        s, e = by_name[name]
        assert s.per_month == pytest.approx(e.per_month)
        assert s.per_1000 == pytest.approx(100 * e.per_1000)


def test_always_on_options_bill_730_hours():
    estimates = {e.name: e for e in costs.serving_estimates(PRICES, inputs())}
    assert estimates["Rekognition Custom Labels"].per_month == pytest.approx(4.0 * 730)
    assert estimates["Vertex AI AutoML image"].per_month == pytest.approx(1.375 * 730)
    realtime = estimates["cxr, realtime endpoint ml.c6i.large"]
    path = sum(costs.predict_path_per_prediction(PRICES, inputs()).values()) * 10_000
    assert realtime.per_month == pytest.approx(0.102 * 730 + path)
    assert realtime.per_1000 == pytest.approx(realtime.per_month / 10)


def test_serverless_total_is_the_sum_of_its_line_items():
    ours = costs.serving_estimates(PRICES, inputs())[0]
    assert set(ours.items) == {"endpoint compute", "endpoint data", "lambda requests", "lambda compute",
                               "s3 requests", "dynamodb writes"}
    assert ours.per_month == pytest.approx(sum(ours.items.values()) * 10_000)


@pytest.mark.parametrize("mode, configured", [("serverless", "cxr, serverless endpoint"),
                                              ("realtime", "cxr, realtime endpoint ml.c6i.large"),
                                              ("async", "cxr, realtime endpoint ml.c6i.large"),
                                              ("lambda", "cxr, lambda mode (no endpoint)")])
def test_the_configured_endpoint_mode_is_marked(mode, configured):
    estimates = costs.serving_estimates(PRICES, inputs(endpoint_mode=mode))
    assert [e.name for e in estimates if e.configured] == [configured]


def test_lambda_mode_bills_the_predict_function_for_the_model_and_nothing_for_an_endpoint():
    """10,000 X-rays a month: the function's own time (normalise and the model, measured in process) and the same
    requests, no endpoint compute or data: below the serverless figure, which also pays the Lambda's wait."""
    latency = costs.Latency(endpoint_ms=20.0, normalise_ms=10.0, request_bytes=20_000, response_bytes=400,
                            source="test", in_function_ms=8.0)
    estimates = {e.name: e for e in costs.serving_estimates(PRICES, inputs(latency=latency, per_month=10_000))}
    in_function, serverless = estimates["cxr, lambda mode (no endpoint)"], estimates["cxr, serverless endpoint"]
    assert set(in_function.items) == {"lambda requests", "lambda compute", "s3 requests", "dynamodb writes"}
    assert in_function.items["lambda compute"] == pytest.approx(
        PRICES["lambda_gb_second.x86_64"].value * 2048 / 1024 * (10.0 + 8.0) / 1000)
    assert in_function.per_month < serverless.per_month
    older = costs.serving_estimates(PRICES, inputs())  # a result file without in_function_ms: the request's time
    assert next(e for e in older if e.name.startswith("cxr, lambda")).items["lambda compute"] == pytest.approx(
        PRICES["lambda_gb_second.x86_64"].value * 2048 / 1024 * (10.0 + 20.0) / 1000)


def test_training_on_demand_against_spot():
    cost = costs.training_cost(PRICES, inputs(training_hours=2.5))
    assert cost.on_demand == pytest.approx(0.7364 * 2.5)
    assert cost.spot == pytest.approx(0.7364 * 2.5 * 0.3)
    assert cost.configured == "spot"
    assert costs.training_cost(PRICES, inputs(training_spot=False)).configured == "on demand"


def test_a_spot_saving_outside_a_fraction_is_refused():
    with pytest.raises(UserError, match="fraction"):
        costs.training_cost(PRICES | {"sagemaker_spot_saving": flat(70)}, inputs())


def test_an_instance_type_without_a_price_names_the_missing_entry():
    with pytest.raises(UserError, match="sagemaker_hosting_hour.ml.p3.2xlarge.*--prices"):
        costs.serving_estimates(PRICES, inputs(endpoint_instance_type="ml.p3.2xlarge"))


def test_price_names_are_exactly_the_prices_the_estimates_read():
    needed = {name: PRICES[name] for name in costs.price_names(inputs())}
    costs.serving_estimates(needed, inputs())
    costs.training_cost(needed, inputs())
    for name in needed:
        with pytest.raises(UserError, match=name.replace(".", r"\.")):
            without = {k: v for k, v in needed.items() if k != name}
            costs.serving_estimates(without, inputs())
            costs.training_cost(without, inputs())


def test_every_bundled_price_has_a_value_a_date_and_a_source():
    prices = costs.load_prices()
    assert set(PRICES) <= set(prices)
    for name, p in prices.items():
        assert isinstance(p.value, float | int) and p.value > 0, name
        assert p.unit and p.as_of[:2] in ("19", "20") and p.source.startswith("https://"), name


def test_a_prices_file_overrides_only_its_entries(tmp_path):
    override = tmp_path / "prices.json"
    override.write_text(json.dumps({"prices": {"vertex_automl_image_node_hour": {
        "value": 2.0, "unit": "USD per node hour", "as_of": "2026-11", "source": "https://cloud.google.com/x"}}}))
    prices = costs.load_prices(override)
    assert prices["vertex_automl_image_node_hour"].value == 2.0
    assert prices["lambda_request"] == costs.load_prices()["lambda_request"]
    override.write_text("{}")
    with pytest.raises(UserError, match="prices file"):
        costs.load_prices(override)


def test_latency_comes_from_the_benchmark_result_file(tmp_path):
    result = {"architecture": "efficientnet_lite0", "input": 160, "runs": 100, "threads": 1, "load_average": 0.5,
              "endpoint_ms": 12.5, "normalise_ms": 9.0, "endpoint_request_bytes": 21000,
              "endpoint_response_bytes": 380, "measured_at": "2026-11-24T00:00:00Z"}
    path = tmp_path / "latency.json"
    path.write_text(json.dumps(result))
    latency = costs.Latency.from_file(path)
    assert (latency.endpoint_ms, latency.normalise_ms, latency.request_bytes) == (12.5, 9.0, 21000)
    assert "efficientnet_lite0 160 px" in latency.source and "2026-11-24" in latency.source
    with pytest.raises(UserError, match="bench/latency.py MODEL_DIR --json"):
        costs.Latency.from_file(tmp_path / "missing.json")
    path.write_text(json.dumps({k: v for k, v in result.items() if k != "endpoint_ms"}))
    with pytest.raises(UserError, match="endpoint_ms"):
        costs.Latency.from_file(path)


def test_cost_json_uses_the_configuration_the_measurement_and_the_prices(capsys):
    assert main(["cost", "--json", "--per-month", "20000", "-c", "serverless_memory_mb=2048",
                 "-c", "endpoint_mode=realtime"]) == 0
    report = json.loads(capsys.readouterr().out)
    measured = json.loads((ROOT / "bench" / "results" / "latency.json").read_text())
    assert report["inputs"]["serverless_memory_mb"] == 2048
    assert report["inputs"]["latency"]["endpoint_ms"] == measured["endpoint_ms"]
    assert report["inputs"]["training_hours"] == pytest.approx(14400 / 3600)
    ours = report["serving"][0]
    assert ours["items"]["endpoint compute"] == pytest.approx(2 * measured["endpoint_ms"] / 1000 * 0.00002)
    assert ours["per_month"] == pytest.approx(ours["per_1000"] * 20)
    assert "serverless_memory_mb" in report["sources"]["configuration"]
    assert [e["name"] for e in report["serving"] if e["configured"]] == ["cxr, realtime endpoint ml.c6i.large"]
    assert set(report["prices"]) == costs.price_names(costs.Inputs(**{
        **report["inputs"], "latency": LATENCY}))
    assert all(p["source"].startswith("https://") and p["as_of"] for p in report["prices"].values())


def test_cost_table_names_every_option_and_its_sources(capsys):
    assert main(["cost", "--training-hours", "1.5"]) == 0
    out = capsys.readouterr().out
    for text in ("cxr, serverless endpoint", "realtime endpoint ml.c6i.large", "Rekognition Custom Labels",
                 "Vertex AI AutoML image", "1.5 h", "training_hours: --training-hours",
                 "bench/results/latency.json", "https://aws.amazon.com/sagemaker-ai/pricing/"):
        assert text in out


@pytest.mark.parametrize("argv, message", [
    (["cost", "-c", "serverless_memory_mb=1000"], "serverless_memory_mb"),
    (["cost", "-c", "endpoint_instance_type=ml.m5.4xlarge"], "no price 'sagemaker_hosting_hour.ml.m5.4xlarge'"),
    (["cost", "-c", "endpoint_instance_type=ml.g4dn.xlarge"], "endpoint_instance_type ml.g4dn.xlarge pays for a GPU"),
    (["cost", "--latency", "/nonexistent/latency.json"], "no latency measurement"),
])
def test_cost_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def job_description(**overrides) -> dict:
    return {"TrainingJobName": "cxr-0-abc", "TrainingJobStatus": "Completed",
            "ResourceConfig": {"InstanceType": "ml.g4dn.xlarge"}, "EnableManagedSpotTraining": True,
            "TrainingTimeInSeconds": 3600, "BillableTimeInSeconds": 1080} | overrides


def test_a_finished_job_gives_its_hours_and_its_own_spot_saving():
    measured = costs.MeasuredTraining.from_description(job_description())
    assert (measured.training_s, measured.instance_type) == (3600, "ml.g4dn.xlarge")
    assert measured.spot_saving == pytest.approx(0.7)
    assert costs.MeasuredTraining.from_description(job_description(EnableManagedSpotTraining=False)).spot_saving is None
    with pytest.raises(UserError, match="is InProgress: measure a finished one"):
        costs.MeasuredTraining.from_description(job_description(TrainingJobStatus="InProgress"))


def test_cost_of_a_training_run_measured_on_a_deployment(capsys, aws):
    from datetime import timedelta

    import boto3
    from moto.sagemaker.models import sagemaker_backends

    boto3.client("sagemaker").create_training_job(
        TrainingJobName="cxr-0-measured", RoleArn="arn:aws:iam::123456789012:role/r",
        AlgorithmSpecification={"TrainingImage": "x", "TrainingInputMode": "File"},
        OutputDataConfig={"S3OutputPath": "s3://b/models/"},
        ResourceConfig={"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50},
        StoppingCondition={"MaxRuntimeInSeconds": 7200},
    )
    job = sagemaker_backends["123456789012"]["us-east-1"].training_jobs["cxr-0-measured"]
    job.training_start_time = job.training_end_time - timedelta(minutes=90)
    assert main(["cost", "--json", "--training-job", "cxr-0-measured", "--region", "us-east-1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["training"]["hours"] == pytest.approx(1.5)
    assert report["training"]["on_demand"] == pytest.approx(1.5 * report["prices"][
        "sagemaker_training_hour.ml.g4dn.xlarge"]["value"])
    assert report["sources"]["training_hours"] == "training job cxr-0-measured"
    assert main(["cost", "--training-job", "cxr-0-missing", "--region", "us-east-1"]) == 1
    assert "training job cxr-0-missing not found in us-east-1" in capsys.readouterr().err
