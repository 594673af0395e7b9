"""chDB sized for the small machine it shares with the limiter.

chDB is ClickHouse inside the pipeline worker's process, and its defaults are a server's,
sized for a machine of its own: a 5 GiB mark cache, a thousand idle threads kept for
reuse, and up to 128 threads started at once to delete the parts that merges replaced
(which, with a small insert every fraction of a second, happens every 30 seconds).  On a
two-core box beside the limiter that is a worker of 170 threads whose bursts of runnable
threads slow the checks down.  Every value RateWatch changes is here, with why; ``connect``
in ``analytics.clickhouse`` applies them to every chDB client, and a ClickHouse server keeps
its own configuration.

They are of three kinds, applied three ways:

- ``ENGINE_SETTINGS``: the embedded server's pools and caches, read once, when a process
  first opens chDB (a configuration file, ``config-file``);
- ``MERGE_TREE_SETTINGS``: the defaults of every table (the same file's ``merge_tree``);
- ``SESSION_SETTINGS``: each client's session (clickhouse-connect's ``settings``).

chDB does not take ``max_parts_cleaning_thread_pool_size`` (its pool keeps 128 threads
whatever the file says), so the parts are deleted on the cleanup thread itself instead:
``concurrent_part_removal_threshold`` is set beyond any count of parts.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from xml.sax.saxutils import escape

MIB = 1024 * 1024

CONFIG_FILE_NAME = "ratewatch-chdb.xml"

ENGINE_SETTINGS: dict[str, int] = {
    # the threads that merge parts (default 16): two keep up with a batch every few hundred
    # milliseconds into a dozen tables without taking both cores
    "background_pool_size": 2,
    # up to four merges queued on those two threads, small ones beside a long one
    "background_merges_mutations_concurrency_ratio": 2,
    # the tables' housekeeping, choosing merges and cleaning up (default 512): short tasks
    "background_schedule_pool_size": 2,
    # idle threads kept for reuse (default 1000): the threads of a burst end afterwards
    "max_thread_pool_free_size": 16,
    # marks of the columns read (default 5 GiB): a month of decisions has a few tens of MiB
    "mark_cache_size": 64 * MIB,
    # marks of skipping indexes (default 5 GiB)
    "index_mark_cache_size": 16 * MIB,
    # primary keys, for tables that cache them (default 5 GiB)
    "primary_index_cache_size": 32 * MIB,
    # decompressed blocks: off, as by default; the operating system's page cache serves
    "uncompressed_cache_size": 0,
    # which granules matched a filter before (default 100 MiB)
    "query_condition_cache_size": 16 * MIB,
    # compiled expressions (default 128 MiB): the queries are few and repeat
    "compiled_expression_cache_size": 16 * MIB,
    # how often the memory worker reads the process's memory (default 0: every 50 ms in a
    # cgroup, 100 ms otherwise): twenty wake-ups a second of an idle worker, for a memory
    # limit a few hundred MiB away that a second's delay does not bring nearer
    "memory_worker_period_ms": 1000,
}

MERGE_TREE_SETTINGS: dict[str, int] = {
    # never fan the deletion of replaced parts out to the parts-cleaning pool (128 threads)
    "concurrent_part_removal_threshold": 1_000_000,
    # how often each table looks for replaced parts to delete (default every second): ten
    # tables, ten wake-ups a second of an idle worker; replaced parts wait a little longer
    "merge_tree_clear_old_parts_interval_seconds": 10,
}

SESSION_SETTINGS: dict[str, int] = {
    # threads of one query (chDB's default: one per core): an analyst's query takes two
    # cores at most, and the limiter runs at a higher priority anyway
    "max_threads": 2,
    # an insert's own rows and its materialized views are written by one thread
    "max_insert_threads": 1,
}


def config_xml() -> str:
    """The configuration file of the engine: ``ENGINE_SETTINGS`` and ``MERGE_TREE_SETTINGS``."""

    def elements(settings: dict[str, int], indent: str) -> str:
        return "".join(
            f"{indent}<{name}>{escape(str(value))}</{name}>\n" for name, value in settings.items()
        )

    return (
        "<!-- written by RateWatch (analytics/chdb_config.py) each time it opens chDB -->\n"
        "<clickhouse>\n"
        f"{elements(ENGINE_SETTINGS, '  ')}"
        "  <merge_tree>\n"
        f"{elements(MERGE_TREE_SETTINGS, '    ')}"
        "  </merge_tree>\n"
        "</clickhouse>\n"
    )


def write_config(directory: Path) -> Path:
    """The configuration file in chDB's ``directory``, written (atomically) unless it is
    there already as it should be: several processes may open the directory in turn."""
    path = directory / CONFIG_FILE_NAME
    text = config_xml()
    try:
        if path.read_text(encoding="utf-8") == text:
            return path
    except OSError:
        pass
    directory.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{CONFIG_FILE_NAME}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
