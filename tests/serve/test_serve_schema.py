"""Schemathesis against the served /openapi.json: for generated requests (valid and
invalid) every route answers without a 5xx, with a status, content type, headers and
body its schema declares. Bounded: a few examples per operation."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings as hypothesis_settings
from schemathesis.checks import (content_type_conformance, negative_data_rejection, not_a_server_error,
                                 response_headers_conformance, response_schema_conformance,
                                 status_code_conformance)

from selftrain.serve.app import create_app


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx, value):
    return str(value).encode("utf-8") if not isinstance(value, bytes) else value


@pytest.fixture
def api_schema(settings, sqlite_db, engine, key_maker, request):
    request.node.selftrain_keys = key_maker(sqlite_db)
    app = create_app(settings, sqlite_db, engine=engine)
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    app.state.writer.stop()


schema = schemathesis.pytest.from_fixture("api_schema")
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection]


@schema.parametrize()
@hypothesis_settings(max_examples=6, deadline=None, derandomize=True,
                     suppress_health_check=list(HealthCheck))
def test_every_route_keeps_to_its_schema(case, request):
    keys = request.node.selftrain_keys
    case.call_and_validate(headers={"Authorization": f"Bearer {keys.admin}"}, checks=CHECKS)
