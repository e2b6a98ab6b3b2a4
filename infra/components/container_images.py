"""The pinned images as a CDK region mapping, deploy-time lookups into it, and a warning once AWS stops patching one.

The table is ``infra/images.py``'s; this is the CDK side of it. Synthesis warns (it does not fail)
for each pinned image past its end of patch, on the date from the ``cxr:today`` context value
(ISO date; tests inject it) or today's.
"""

from __future__ import annotations

import datetime

from aws_cdk import Annotations, Aws, CfnMapping, Fn, Stack
from constructs import Construct

from infra import images

TODAY_CONTEXT = "cxr:today"
WARNING_ID = "cxr:image-past-end-of-patch"


class PyTorchImages(Construct):
    """The mapping, and deploy-time lookups into it."""

    def __init__(self, scope: Construct, construct_id: str = images.MAPPING_ID):
        super().__init__(scope, construct_id)
        self.mapping = CfnMapping(self, "Table", mapping=images.image_table())
        today = self.node.try_get_context(TODAY_CONTEXT)
        today = datetime.date.fromisoformat(today) if today else datetime.date.today()
        for line in images.past_end_of_patch(today):
            Annotations.of(self).add_warning_v2(WARNING_ID, line)

    def uri(self, column: str) -> str:
        return self.mapping.find_in_map(Aws.REGION, column)

    def repository_arn(self, column: str) -> str:
        """The ECR repository of one column in the deploying region (for the pull permission)."""
        uri = self.uri(column)
        return Stack.of(self).format_arn(
            service="ecr", account=Fn.select(0, Fn.split(".", uri)), resource="repository",
            resource_name=Fn.select(0, Fn.split(":", Fn.select(1, Fn.split("/", uri)))),
        )
