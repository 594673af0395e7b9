"""The server's published /openapi.json as a test oracle: schemas to validate answers by,
and hypothesis strategies for bodies a schema allows."""

from __future__ import annotations

from typing import Any

import httpx
import jsonschema
from hypothesis import strategies as st


def schema_of(spec: dict[str, Any], name: str) -> dict[str, Any]:
    """The component ``name`` of ``spec``, with the components its references need."""
    return {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}


def assert_published_shape(client: httpx.Client, body: Any, name: str) -> None:
    """``body`` is valid by the schema ``name`` of the server's /openapi.json."""
    components = client.get("/openapi.json").json()["components"]
    jsonschema.validate(body, {"$ref": f"#/components/schemas/{name}", "components": components})


def values(spec: dict[str, Any], schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values valid by one property schema (the kinds the limiter's schemas use)."""
    if "$ref" in schema:
        return values(spec, spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]])
    if "anyOf" in schema:
        return st.one_of(*(values(spec, option) for option in schema["anyOf"]))
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "string":
        return st.text(
            min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 50), 50)
        )
    raise AssertionError(f"no strategy for schema {schema}")


def objects(
    spec: dict[str, Any], name: str, overrides: dict[str, st.SearchStrategy[Any]]
) -> st.SearchStrategy[dict[str, Any]]:
    """Objects valid by the named schema: every required property, any optional ones."""
    schema = spec["components"]["schemas"][name]
    required = set(schema.get("required", []))
    fields = {
        prop: overrides.get(prop, values(spec, sub)) for prop, sub in schema["properties"].items()
    }
    return st.fixed_dictionaries(
        {prop: strategy for prop, strategy in fields.items() if prop in required},
        optional={prop: strategy for prop, strategy in fields.items() if prop not in required},
    )
