"""boto3 clients for the AWS control plane, honouring the endpoint overrides (moto_server).

boto3 is imported when a client is first made, so a server that follows no AWS feed never
loads it.
"""

from __future__ import annotations

from typing import Any

from atcdn.core.settings import ControlSettings


def client(service: str, settings: ControlSettings) -> Any:
    """A boto3 client for ``service`` (``route53``, ``dynamodb``)."""
    import boto3

    endpoint = getattr(settings, f"{service}_endpoint_url", None) or settings.aws_endpoint_url
    return boto3.client(service, region_name=settings.aws_region, endpoint_url=endpoint)
