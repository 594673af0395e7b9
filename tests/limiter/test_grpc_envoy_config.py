"""The Envoy configuration docs/gateways.md gives is a valid Envoy bootstrap: parsed with
Envoy's own protos (xds-protos), every field name, enum value and typed config checked."""

from __future__ import annotations

import re
import textwrap

import pytest
import yaml

# the typed configs the documented bootstrap names: imported, their types are known
from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap
from envoy.config.route.v3.route_components_pb2 import RateLimit
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from google.protobuf import json_format

from tests.support.paths import REPO

pytestmark = pytest.mark.timeout(30)


def envoy_section() -> str:
    text = (REPO / "docs" / "gateways.md").read_text()
    start = text.index("## Envoy (gRPC rate limit service)")
    following = text.find("\n## ", start + 1)
    return text[start : following if following != -1 else len(text)]


def test_the_documented_envoy_configuration_is_a_valid_bootstrap() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", envoy_section(), re.DOTALL)
    config = yaml.safe_load(blocks[0])
    bootstrap = json_format.ParseDict(config, Bootstrap())
    (listener,) = bootstrap.static_resources.listeners
    manager = http_connection_manager_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    limiter = rate_limit_pb2.RateLimit()
    manager.http_filters[0].typed_config.Unpack(limiter)
    service = limiter.rate_limit_service
    assert service.grpc_service.envoy_grpc.cluster_name == "ratewatch"
    assert service.grpc_service.initial_metadata[0].key == "authorization"
    # every descriptor names a policy: the first action is the generic key `policy`
    route = manager.route_config.virtual_hosts[0].routes[0].route
    assert [r.actions[0].generic_key.descriptor_key for r in route.rate_limits] == [
        "policy",
        "policy",
    ]
    cluster = next(c for c in bootstrap.static_resources.clusters if c.name == "ratewatch")
    assert "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" in (
        cluster.typed_extension_protocol_options
    )


def test_the_documented_limit_override_is_a_valid_route_rate_limit() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", envoy_section(), re.DOTALL)
    (config,) = yaml.safe_load(textwrap.dedent(blocks[1]))
    rate_limit = json_format.ParseDict(config, RateLimit())
    assert rate_limit.actions[0].dynamic_metadata.descriptor_key == "account"
    assert rate_limit.limit.dynamic_metadata.metadata_key.key == "envoy.filters.http.jwt_authn"
