"""The outbound policy's decisions (no traffic is sent anywhere: only addresses are judged)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from orchestrator.config import OutboundSettings
from worker_sdk.outbound import ENVIRONMENT_VARIABLE, OutboundPolicy


def test_by_default_cloud_metadata_and_link_local_are_closed_and_the_rest_open() -> None:
    policy = OutboundPolicy.build()
    closed = {
        "169.254.169.254": "cloud metadata",
        "metadata.google.internal": "cloud metadata",
        "METADATA.google.internal.": "cloud metadata",
        "fd00:ec2::254": "cloud metadata",
        "100.100.100.200": "cloud metadata",
        "169.254.1.1": "link-local",
        "[fe80::1]": "link-local",
        "::ffff:169.254.169.254": "cloud metadata",  # the same address written as IPv6
        "0.0.0.0": "unspecified",
    }
    for host, rule in closed.items():
        assert (policy.refuses_host(host) or "").startswith(rule), host
    for host in ("10.1.2.3", "192.168.0.10", "127.0.0.1", "::1", "8.8.8.8", "example.com", "localhost"):
        assert policy.refuses_host(host) is None, host


def test_an_operator_closes_private_ranges_and_loopback_and_opens_exceptions() -> None:
    policy = OutboundPolicy.build(private=False, loopback=False, allow=["10.20.0.0/16"], deny=["203.0.113.0/24"])
    assert (policy.refuses_address("10.1.2.3") or "").startswith("private")
    assert (policy.refuses_address("172.16.5.5") or "").startswith("private")
    assert (policy.refuses_address("fd12::1") or "").startswith("private")
    assert (policy.refuses_address("127.0.0.1") or "").startswith("loopback")
    assert policy.refuses_address("10.20.3.4") is None  # allowed inside a closed range
    assert (policy.refuses_address("203.0.113.9") or "").startswith("denied network 203.0.113.0/24")
    assert policy.refuses_address("8.8.8.8") is None


def test_the_policy_reaches_workers_unchanged() -> None:
    settings = OutboundSettings(private_networks="deny", allow=["10.9.0.0/16"], deny=["198.51.100.0/24"])
    environment = {ENVIRONMENT_VARIABLE: settings.policy.to_json()}
    assert OutboundPolicy.from_environment(environment) == settings.policy
    assert OutboundPolicy.from_environment({}) == OutboundPolicy.build()


def test_a_network_that_is_not_one_is_refused_by_name() -> None:
    with pytest.raises(ValidationError, match=r"'10\.0\.0\.300/8' is not a network"):
        OutboundSettings(deny=["10.0.0.300/8"])
