"""The ClickHouse data source plugin's query, as a dataquery of grafana-foundation-sdk.

The SDK ships typed queries for Grafana's core data sources only; a plugin's query is a
``Dataquery`` of its own with a builder, which the SDK's panels take like any other.
Registered with the SDK's runtime (``register``), a dashboard read back by the SDK's model
decodes its targets into this class again, so nothing is lost in a round trip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Self

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models.dashboard import DataSourceRef

DATASOURCE_TYPE = "grafana-clickhouse-datasource"
# the plugin version the queries are written for (4.x's query model) and compose installs
PLUGIN_VERSION = "4.9.0"

Format = Literal["table", "timeseries"]
# the plugin's numeric format of each result shape
FORMATS: dict[str, int] = {"timeseries": 0, "table": 1}


@dataclass
class ClickHouseQuery(cogvariants.Dataquery):
    """A SQL-editor query: ``rawSql`` with its result shape (``format`` / ``queryType``)."""

    ref_id: str
    raw_sql: str
    query_type: Format
    datasource: DataSourceRef | None = None
    plugin_version: str = PLUGIN_VERSION

    def to_json(self) -> dict[str, object]:
        document: dict[str, object] = {
            "refId": self.ref_id,
            "editorType": "sql",
            "format": FORMATS[self.query_type],
            "queryType": self.query_type,
            "rawSql": self.raw_sql,
            "pluginVersion": self.plugin_version,
        }
        if self.datasource is not None:
            document["datasource"] = self.datasource.to_json()
        return document

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        datasource = data.get("datasource")
        return cls(
            ref_id=data["refId"],
            raw_sql=data["rawSql"],
            query_type=data["queryType"],
            datasource=DataSourceRef.from_json(datasource) if datasource is not None else None,
            plugin_version=data.get("pluginVersion", PLUGIN_VERSION),
        )


class ClickHouseQueryBuilder(cogbuilder.Builder[ClickHouseQuery]):
    def __init__(self, raw_sql: str, query_type: Format, ref_id: str = "A") -> None:
        self._internal = ClickHouseQuery(ref_id, raw_sql, query_type)

    def datasource(self, datasource: DataSourceRef) -> Self:
        self._internal.datasource = datasource
        return self

    def build(self) -> ClickHouseQuery:
        return self._internal


def register() -> None:
    """Make the SDK's model decode this plugin's targets as ``ClickHouseQuery``."""
    cogruntime.Runtime().register_dataquery_variant(
        cogruntime.DataqueryConfig(DATASOURCE_TYPE, ClickHouseQuery.from_json)
    )
