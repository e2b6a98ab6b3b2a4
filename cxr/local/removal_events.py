"""``ObjectRemoved`` notifications for versioned buckets, which moto 5.2.5 does not send and S3 does.

S3 notifies ``s3:ObjectRemoved:DeleteMarkerCreated`` when a delete without a version id adds a
delete marker, and ``s3:ObjectRemoved:Delete`` when a version is deleted for good. moto sends
neither for a versioned bucket (only the delete of a key's last version), so in the offline cloud
deleting an upload would never reach the preprocess Lambda. This wraps moto's ``delete_object``
and sends the missing event through moto's own Lambda delivery (which :mod:`cxr.local.hooks` routes
to the real handler), with a sequencer from the same counter as the create events.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from unittest import mock

import moto.s3.models as s3_models
import moto.s3.notifications as s3_notifications

from cxr.local import hooks, s3_events

HOOK_POINT = (s3_models.S3Backend, "delete_object", ("self", "bucket_name", "key_name", "version_id"))
DELETE_MARKER_CREATED = "ObjectRemoved:DeleteMarkerCreated"
DELETED = "ObjectRemoved:Delete"


def check() -> None:
    owner, name, params = HOOK_POINT
    actual = tuple(inspect.signature(getattr(owner, name)).parameters)
    if actual[: len(params)] != params:
        raise RuntimeError(f"moto: {owner.__name__}.{name}{actual} no longer starts with {params}")


@contextmanager
def installed():
    """Patch moto for the block (inside :func:`cxr.local.hooks.installed`, which delivers to the handlers)."""
    check()
    original = s3_models.S3Backend.delete_object

    def delete_object(self, bucket_name, key_name, version_id=None, *args, **kwargs):
        bucket = self.get_bucket(bucket_name)
        versions_before = len(bucket.keys.getlist(key_name, [])) if bucket.is_versioned else 0
        deleted, meta = original(self, bucket_name, key_name, version_id, *args, **kwargs)
        if deleted and bucket.is_versioned:
            if version_id is None and meta.get("delete-marker") == "true":
                _notify(self.account_id, bucket, key_name, meta["version-id"], DELETE_MARKER_CREATED)
            elif version_id is not None and 1 < versions_before:  # moto notifies only when the last one goes
                _notify(self.account_id, bucket, key_name, version_id, DELETED)
        return deleted, meta

    with mock.patch.object(s3_models.S3Backend, "delete_object", delete_object):
        yield


def _notify(account_id: str, bucket, key_name: str, version_id: str, event_name: str) -> None:
    configuration = bucket.notification_configuration
    for notification in configuration.cloud_function if configuration else []:
        if notification.matches(f"s3:{event_name}", key_name):
            record = s3_events.object_created_record(bucket.name, key_name, 0, version_id=version_id,
                                                     sequencer=hooks.next_sequencer(), region=bucket.region_name,
                                                     event_name=event_name)
            s3_notifications._invoke_awslambda(account_id, s3_events.event(record), notification.arn,
                                               notification.arn.split(":")[3])
