"""SQL text: splitting a script into statements, and the read-only check of analysts' queries.

Both read the text with ``analytics.sqllexer``, ClickHouse's own lexing rules, so that a
``;`` or a keyword inside a string, a heredoc, a quoted name or a comment is not mistaken
for structure, nor structure for a string.  The read-only check is the first of the guards
in ``analytics.readonly``: it allows one SELECT/WITH/SHOW/DESCRIBE/EXPLAIN statement and
refuses, wherever they stand, INTO OUTFILE (chDB writes the file itself, whatever the
session's ``readonly``) and the functions that read files or reach the network (``file()``
reads any file even in a read-only session; ``url()``, ``s3()``, ``remote()`` and the rest).
"""

from __future__ import annotations

from analytics.errors import QueryError
from analytics.sqllexer import Kind, Token, tokenize

READ_ONLY_STATEMENTS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN"})

# table functions that only compute or read this server's own tables
PURE_TABLE_FUNCTIONS = frozenset(
    {
        "numbers",
        "numbers_mt",
        "zeros",
        "zeros_mt",
        "generate_series",
        "generateSeries",
        "primes",
        "values",
        "null",
        "view",
        "format",  # also the string function format('{} {}', a, b)
        "generateRandom",
        "merge",
    }
)
# every other table function ClickHouse 24.8 to 26.9 knows (a test checks the engine's
# system.table_functions against both lists), and the function file(), which reads any
# file; compared without case, called under any of these names they are refused
OUTSIDE_FUNCTIONS = frozenset(
    {
        "file",
        "fileCluster",
        "filesystem",
        "url",
        "urlCluster",
        "s3",
        "s3Cluster",
        "gcs",
        "oss",
        "cosn",
        "azureBlobStorage",
        "azureBlobStorageCluster",
        "hdfs",
        "hdfsCluster",
        "remote",
        "remoteSecure",
        "cluster",
        "clusterAllReplicas",
        "mysql",
        "postgresql",
        "mongodb",
        "redis",
        "sqlite",
        "jdbc",
        "odbc",
        "bigquery",
        "ytsaurus",
        "meilisearch",
        "arrowFlight",
        "arrowstream",
        "executable",
        "python",
        "eval",
        "input",
        "dictionary",
        "loop",
        "fuzzJSON",
        "fuzzQuery",
        "SQLStandardValues",
        "viewIfPermitted",
        "viewExplain",
        "catboostEvaluate",
        "iceberg",
        "icebergS3",
        "icebergAzure",
        "icebergHDFS",
        "icebergLocal",
        "icebergCluster",
        "icebergS3Cluster",
        "icebergAzureCluster",
        "icebergHDFSCluster",
        "icebergLocalCluster",
        "deltaLake",
        "deltaLakeS3",
        "deltaLakeAzure",
        "deltaLakeLocal",
        "deltaLakeCluster",
        "deltaLakeS3Cluster",
        "deltaLakeAzureCluster",
        "hudi",
        "hudiCluster",
        "paimon",
        "paimonS3",
        "paimonAzure",
        "paimonHDFS",
        "paimonLocal",
        "paimonCluster",
        "paimonS3Cluster",
        "paimonAzureCluster",
        "paimonHDFSCluster",
        "prometheusQuery",
        "prometheusQueryRange",
        "timeSeriesData",
        "timeSeriesMetrics",
        "timeSeriesTags",
        "timeSeriesSamples",
        "timeSeriesSelector",
        "timeSeriesMetricFamilies",
        "mergeTreeIndex",
        "mergeTreeProjection",
        "mergeTreeTextIndex",
        "mergeTreeAnalyzeIndexes",
        "mergeTreeAnalyzeIndexesUUID",
        "mergeTreeCodecBlockCounts",
    }
)
_OUTSIDE = frozenset(name.lower() for name in OUTSIDE_FUNCTIONS)


def split_statements(script: str) -> list[str]:
    """The statements of ``script``, without their ``;`` and blank ones, comments kept."""
    statements: list[list[Token]] = [[]]
    for token in tokenize(script):
        if token.kind == Kind.SEMICOLON:
            statements.append([])
        else:
            statements[-1].append(token)
    return [
        "".join(token.text for token in statement).strip()
        for statement in statements
        if any(token.significant for token in statement)
    ]


def check_read_only(sql: str) -> str:
    """``sql`` as one statement, if it is a single SELECT/WITH/SHOW/DESCRIBE/EXPLAIN that
    neither writes a file nor reads one or the network; QueryError saying why not otherwise.
    Comments before and after the statement, and its ``;``, are left out."""
    code = [token for token in tokenize(sql) if token.significant]
    if not code or (code[0].kind == Kind.SEMICOLON and len(code) == 1):
        raise QueryError("empty query")
    ends = [i for i, token in enumerate(code) if token.kind == Kind.SEMICOLON]
    if ends and (ends[0] == 0 or ends[0] != len(code) - 1):
        raise QueryError("only one statement per query")
    statement = code[: ends[0]] if ends else code
    _check_statement(statement)
    return sql[statement[0].start : statement[-1].end]


def _check_statement(code: list[Token]) -> None:
    first = next((token for token in code if token.kind != Kind.OPEN), None)
    word = first.text.upper() if first is not None and first.kind == Kind.WORD else ""
    if word not in READ_ONLY_STATEMENTS:
        raise QueryError(
            f"read-only: {word or 'this statement'} is refused;"
            " only SELECT, WITH, SHOW, DESCRIBE and EXPLAIN may run"
        )
    for i, token in enumerate(code):
        following = code[i + 1] if i + 1 < len(code) else None
        if token.kind == Kind.WORD and token.text.upper() == "OUTFILE":
            raise QueryError("read-only: INTO OUTFILE is refused")
        if following is None or following.kind != Kind.OPEN:
            continue
        if token.kind == Kind.QUOTED_NAME:
            raise QueryError(f"read-only: a quoted function name ({token.text}) is refused")
        if token.kind == Kind.WORD and token.text.lower() in _OUTSIDE:
            raise QueryError(f"read-only: {token.text}() is refused: it reads files or the network")
    words = [token.text.upper() if token.kind == Kind.WORD else "" for token in code]
    for i, word in enumerate(words[:-1]):
        # FORMAT name, last or before SETTINGS: the output clause
        named = code[i + 1].kind in (Kind.WORD, Kind.QUOTED_NAME)
        if word == "FORMAT" and named and (i + 2 == len(words) or words[i + 2] == "SETTINGS"):
            raise QueryError("a FORMAT clause is not supported here: results come back as rows")


def strip_comments(sql: str) -> str:
    """``sql`` with each comment replaced by a space."""
    return "".join(" " if token.kind == Kind.COMMENT else token.text for token in tokenize(sql))


def quote(value: str) -> str:
    """``value`` as a ClickHouse string literal.  Backslash is ClickHouse's escape character
    in literals, so it is escaped first, then the quote; every other byte stands for itself
    (the lexer above, and ClickHouse's, end a literal only at an unescaped quote)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
