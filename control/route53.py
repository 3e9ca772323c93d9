"""The AWS control plane: the Route53 records of the edges.

Every edge answers under one DNS name (``ATCDN_EDGE_RECORD_NAME``). Each edge owns one
A record (and one AAAA record when it has IPv6) in that name, told apart by its set
identifier (the edge's name), routed by weight or by latency region, and tied to a
Route53 health check on the edge's ``/health`` so a dead edge leaves the answer set.
The control plane never carries blob bytes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from atcdn.core.aws import client
from atcdn.core.settings import ControlSettings


@dataclass(frozen=True)
class EdgeRecord:
    """One edge as registered: its name (set identifier), addresses and routing."""

    name: str
    ipv4: str
    ipv6: str | None = None
    weight: int | None = None
    latency_region: str | None = None

    def __post_init__(self) -> None:
        if (self.weight is None) == (self.latency_region is None):
            raise ValueError("an edge is routed by exactly one of weight or latency_region")
        if self.weight is not None and not 0 <= self.weight <= 255:
            raise ValueError("Route53 weights are 0..255")


def _fqdn(name: str) -> str:
    return name if name.endswith(".") else name + "."


def _zone_id(settings: ControlSettings) -> str:
    if not settings.hosted_zone_id:
        raise ValueError("ATCDN_HOSTED_ZONE_ID is not set")
    return settings.hosted_zone_id


def _create_health_check(route53: Any, edge: EdgeRecord, settings: ControlSettings) -> str:
    config = {
        "IPAddress": edge.ipv4,
        "Port": settings.health_check_port,
        "Type": settings.health_check_protocol,
        "ResourcePath": settings.health_check_path,
        "FullyQualifiedDomainName": settings.edge_record_name,
        "RequestInterval": 10,
        "FailureThreshold": 3,
    }
    check = route53.create_health_check(CallerReference=f"atcdn-{edge.name}-{uuid.uuid4()}",
                                        HealthCheckConfig=config)["HealthCheck"]
    route53.change_tags_for_resource(ResourceType="healthcheck", ResourceId=check["Id"],
                                     AddTags=[{"Key": "Name", "Value": f"atcdn-edge-{edge.name}"}])
    return check["Id"]


def _record_set(edge: EdgeRecord, kind: str, address: str, health_check_id: str,
                settings: ControlSettings) -> dict[str, Any]:
    record: dict[str, Any] = {
        "Name": _fqdn(settings.edge_record_name),
        "Type": kind,
        "SetIdentifier": edge.name,
        "TTL": settings.edge_record_ttl,
        "ResourceRecords": [{"Value": address}],
        "HealthCheckId": health_check_id,
    }
    if edge.weight is not None:
        record["Weight"] = edge.weight
    else:
        record["Region"] = edge.latency_region
    return record


def edge_records(settings: ControlSettings, name: str | None = None) -> list[dict[str, Any]]:
    """The A/AAAA record sets under the edge name (only edge ``name``'s when given)."""
    route53 = client("route53", settings)
    wanted = _fqdn(settings.edge_record_name)
    found: list[dict[str, Any]] = []
    for page in route53.get_paginator("list_resource_record_sets").paginate(
            HostedZoneId=_zone_id(settings)):
        for record in page["ResourceRecordSets"]:
            if (record["Name"] == wanted and record["Type"] in ("A", "AAAA")
                    and "SetIdentifier" in record
                    and (name is None or record["SetIdentifier"] == name)):
                found.append(record)
    return found


def register_edge(edge: EdgeRecord, settings: ControlSettings) -> str:
    """Create the edge's health check and UPSERT its records; returns the check's id.

    Registering again replaces the records and the health check (the old check is deleted),
    so the command can be re-run after an address change.
    """
    route53 = client("route53", settings)
    previous = {r["HealthCheckId"] for r in edge_records(settings, edge.name) if "HealthCheckId" in r}
    check_id = _create_health_check(route53, edge, settings)
    changes = [{"Action": "UPSERT",
                "ResourceRecordSet": _record_set(edge, "A", edge.ipv4, check_id, settings)}]
    if edge.ipv6:
        changes.append({"Action": "UPSERT",
                        "ResourceRecordSet": _record_set(edge, "AAAA", edge.ipv6, check_id,
                                                         settings)})
    stale_aaaa = [r for r in edge_records(settings, edge.name) if r["Type"] == "AAAA"]
    if not edge.ipv6:
        changes += [{"Action": "DELETE", "ResourceRecordSet": r} for r in stale_aaaa]
    route53.change_resource_record_sets(
        HostedZoneId=_zone_id(settings),
        ChangeBatch={"Comment": f"atcdn register-edge {edge.name}", "Changes": changes})
    for old in previous - {check_id}:
        route53.delete_health_check(HealthCheckId=old)
    return check_id


def deregister_edge(name: str, settings: ControlSettings) -> int:
    """Delete the edge's records and their health check; returns how many records went."""
    route53 = client("route53", settings)
    records = edge_records(settings, name)
    if records:
        route53.change_resource_record_sets(
            HostedZoneId=_zone_id(settings),
            ChangeBatch={"Comment": f"atcdn deregister-edge {name}",
                         "Changes": [{"Action": "DELETE", "ResourceRecordSet": r}
                                     for r in records]})
    for check_id in {r["HealthCheckId"] for r in records if "HealthCheckId" in r}:
        route53.delete_health_check(HealthCheckId=check_id)
    return len(records)
