"""Property: whatever the order, duplication and concurrency of S3's events, ingest converges on the newest versions.

100 random histories (see :mod:`histories`), derandomized so that CI sees the same ones every run;
``bench/ingest_histories.py`` runs 1,000 and reports the time per history.
"""

import time

import pytest
from hypothesis import HealthCheck, given, settings

import histories

PER_HISTORY_S = 0.5
"""CPU seconds a history may take on average: wall time on a machine shared with other jobs says little."""


@pytest.fixture(scope="module")
def moto_account():
    from moto import mock_aws

    from lambdas import aws

    with mock_aws(), histories.atomic_dynamodb():
        aws.reset_clients()
        yield
    aws.reset_clients()


@pytest.fixture(scope="module")
def timings():
    return []


@settings(max_examples=100, derandomize=True, deadline=None, database=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(history=histories.histories())
def test_every_key_ends_as_its_newest_version_alone_gives(moto_account, timings, history):
    started = time.process_time()
    replay = histories.Replay()
    replay.play(history)
    replay.check(history)
    timings.append(time.process_time() - started)


def test_histories_are_cheap(timings):
    """The property test above keeps to its budget (tiny images), so `make test` can afford 100 histories."""
    assert len(timings) >= 100
    assert sum(timings) / len(timings) <= PER_HISTORY_S, f"{sum(timings) / len(timings):.3f} CPU s a history"
