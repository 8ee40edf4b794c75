"""Property-based run of the served OpenAPI document (schemathesis): no 5xx, and every response conforms
to the documented status codes, content types and schemas."""

from __future__ import annotations

import hypothesis
import schemathesis
from schemathesis import checks
from schemathesis.specs.openapi import checks as oa_checks

from api.conftest import NOW, make_rows
from rstscope.api.app import create_app
from rstscope.api.store import Store


def _app() -> object:
    store = Store()
    store.upsert(make_rows())
    return create_app(store, now=lambda: NOW, expose_connections=True)


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())
CHECKS = [checks.not_a_server_error, oa_checks.status_code_conformance, oa_checks.content_type_conformance,
          oa_checks.response_schema_conformance]


@schema.parametrize()
@hypothesis.settings(max_examples=30, deadline=None, database=None,
                     suppress_health_check=list(hypothesis.HealthCheck))
def test_api_conforms(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=CHECKS)
