"""SQL text without a parser: splitting a script into statements, and the read-only check.

Both only need to know where quoted strings, quoted identifiers and comments are, so that a
``;`` or a keyword inside them is not mistaken for structure.  The read-only check is the
first of two guards; the engine's ``readonly=1`` setting is the one that cannot be talked
round, and this one makes the refusal clear and stops a second statement riding along.
Where this lexer and ClickHouse's could disagree (nested block comments, heredoc strings)
it sees more structure than ClickHouse does, so the check errs towards refusing.
"""

from __future__ import annotations

import re

from analytics.errors import QueryError

READ_ONLY_STATEMENTS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN"})

_TOKEN = re.compile(
    r"""
      (?P<quoted> '(?:[^'\\]|\\.|'')*' | "(?:[^"\\]|\\.|"")*" | `(?:[^`\\]|\\.|``)*` )
    | (?P<comment> --[^\n]* | \#[ !][^\n]* | /\*.*?\*/ )
    | (?P<semicolon> ; )
    | (?P<open> '|"|`|/\* )
    """,
    re.VERBOSE | re.DOTALL,
)
_FIRST_WORD = re.compile(r"\(*\s*([A-Za-z]+)")
# chDB writes INTO OUTFILE files itself, even with readonly=1
_OUTFILE = re.compile(r"\bINTO\s+OUTFILE\b", re.IGNORECASE)
_FORMAT = re.compile(r"\bFORMAT\s+\w+\s*$", re.IGNORECASE)


def split_statements(script: str) -> list[str]:
    """The statements of ``script``, without their ``;`` and blank ones, comments kept."""
    statements: list[str] = []
    start = 0
    for match in _TOKEN.finditer(script):
        if match.lastgroup == "open":
            raise QueryError(f"unterminated {match.group()} at position {match.start()}")
        if match.lastgroup == "semicolon":
            statements.append(script[start : match.start()])
            start = match.end()
    statements.append(script[start:])
    return [s.strip() for s in statements if strip_comments(s).strip()]


def check_read_only(sql: str) -> str:
    """``sql`` as one statement, if it is a single SELECT/WITH/SHOW/DESCRIBE/EXPLAIN;
    QueryError saying why not otherwise."""
    statements = split_statements(sql)
    if not statements:
        raise QueryError("empty query")
    if len(statements) > 1:
        raise QueryError("only one statement per query")
    statement = statements[0]
    code = _code_only(statement).strip()
    match = _FIRST_WORD.match(code)
    word = match.group(1).upper() if match else ""
    if word not in READ_ONLY_STATEMENTS:
        raise QueryError(
            f"read-only: {word or 'this statement'} is refused;"
            " only SELECT, WITH, SHOW, DESCRIBE and EXPLAIN may run"
        )
    if _OUTFILE.search(code):
        raise QueryError("read-only: INTO OUTFILE is refused")
    if _FORMAT.search(code):
        raise QueryError("a FORMAT clause is not supported here: results come back as rows")
    return statement


def _code_only(sql: str) -> str:
    """``sql`` with comments, string literals and quoted identifiers blanked out."""
    return _TOKEN.sub(lambda m: "''" if m.lastgroup == "quoted" else " ", sql)


def strip_comments(sql: str) -> str:
    """``sql`` with each comment replaced by a space."""
    return _TOKEN.sub(lambda m: " " if m.lastgroup == "comment" else m.group(), sql)


def quote(value: str) -> str:
    """``value`` as a ClickHouse string literal.  Backslash is ClickHouse's escape character
    in literals, so it is escaped first, then the quote; every other byte stands for itself
    (the lexer above, and ClickHouse's, end a literal only at an unescaped quote)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
