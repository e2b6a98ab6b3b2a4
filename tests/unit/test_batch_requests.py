"""`cxr batch-predict` in lambda mode: the predict function answers staged objects only, and in that mode only."""

import pytest

from lambdas import batch_requests, predict


def test_only_a_staged_batch_input_has_an_output_key():
    assert batch_requests.output_key("batch-input/job-1/000007") == "batch-output/job-1/000007.out"
    for key in ("incoming/a.jpeg", "batch-input/job-1", "batch-input/job-1/a/b", "batch-input//000001",
                "batch-input/job-1/", "predictions/batch-input/job-1/000001"):
        with pytest.raises(batch_requests.BatchRequestError):
            batch_requests.output_key(key)


def test_a_batch_request_is_refused_unless_the_function_serves_the_model_itself(monkeypatch, lambda_context):
    """With an endpoint the batch goes to Batch Transform; the function must not read staged objects then."""
    for mode in ("serverless", "async", None):
        if mode:
            monkeypatch.setenv("ENDPOINT_MODE", mode)
        else:
            monkeypatch.delenv("ENDPOINT_MODE", raising=False)
        with pytest.raises(batch_requests.BatchRequestError, match="endpoint_mode=lambda"):
            predict.handler({"batch": {"key": "batch-input/job-1/000000"}}, lambda_context)
