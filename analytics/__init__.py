"""Analytics: the decision events in ClickHouse (a server, or chDB embedded in one process).

The schema lives in versioned SQL files (``migrations/``) that ``migrate`` applies the same
way to chDB and to a ClickHouse server; ``DecisionWriter`` inserts consumed batches so that a
replayed batch is never counted twice; the process that owns chDB answers read-only queries
for the others over a Unix socket (``query_server``, ``query_client``), because chDB can be
open in only one process at a time.
"""
