"""Property: whatever the order, duplication and concurrency of S3's events, every key ends as its newest version.

50 random histories (see :mod:`histories`) against ``raw/`` and ingest, 50 against ``incoming/`` and
predictions, 30 against the review queue, derandomized so that CI sees the same ones every run (about 0.4 CPU s
each: 100 and 60 made this the costliest file of ``make test``); ``bench/ingest_histories.py`` runs 1,000 and
reports the time per history.
"""

import time

import pytest
from hypothesis import HealthCheck, given, settings

import histories
import reviewing

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
    return {"ingest": [], "predict": []}


EXAMPLES = 50
SETTINGS = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def play(replay: histories.Replay, history: histories.History, timings: list[float]) -> None:
    started = time.process_time()
    replay.play(history)
    replay.check(history)
    timings.append(time.process_time() - started)


@SETTINGS
@given(history=histories.histories())
def test_every_raw_key_ends_as_its_newest_version_alone_gives(moto_account, timings, history):
    play(histories.IngestReplay(), history, timings["ingest"])


@SETTINGS
@given(history=histories.histories())
def test_every_incoming_key_ends_as_its_newest_version_alone_gives(moto_account, timings, history):
    play(histories.PredictReplay(), history, timings["predict"])


def test_histories_are_cheap(timings):
    """The property tests above keep to their budget (tiny images), so `make test` can afford its histories."""
    for name, spent in timings.items():
        assert len(spent) >= EXAMPLES, name
        assert sum(spent) / len(spent) <= PER_HISTORY_S, f"{name}: {sum(spent) / len(spent):.3f} CPU s a history"


@settings(max_examples=30, derandomize=True, deadline=None, database=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(history=histories.histories())
def test_open_review_tasks_are_exactly_the_current_selected_versions(moto_account, history):
    """The review queue on (referred and sampled versions become tasks): it follows each key's newest version."""
    replay = reviewing.ReviewReplay()
    replay.play(history)
    replay.check(history)
