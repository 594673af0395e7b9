"""ClickHouse's lexer, in Python: where the literals, quoted names and comments of SQL text are.

The rules follow ClickHouse's ``src/Parsers/Lexer.cpp`` token for token, because a guard that
reads a query differently from the engine can be talked round (``SELECT $$'$$ INTO OUTFILE
'x' --'`` is one SELECT of one heredoc string to ClickHouse, and a SELECT of harmless text to
a lexer that does not know heredocs):

- strings ``'…'`` and quoted names ``"…"`` and ```…```: a backslash escapes the next
  character, a doubled quote stands for itself;
- heredoc strings ``$tag$…$tag$`` (the tag may be empty: ``$$…$$``);
- ``x'…'`` and ``b'…'`` hex and binary strings;
- comments ``-- …`` and ``// …`` to the end of the line, ``# …`` and ``#!…`` likewise (``#``
  must be followed by a space or ``!``), and ``/* … */``, which nest;
- numbers, including ``1e-5`` (the sign belongs to the number: ``1e--5`` is no comment).

Where ClickHouse versions read a text differently the lexer refuses it rather than guess:
a heredoc whose tag is not a plain word, and any character outside ASCII that is not inside
a string, a quoted name or a comment (newer versions read ``‘…’`` and ``“…”`` as quotes).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from analytics.errors import QueryError


class Kind(Enum):
    SPACE = "space"
    COMMENT = "comment"
    WORD = "word"  # bare words: keywords, names, function names
    QUOTED_NAME = "quoted name"
    STRING = "string"  # '…', x'…', b'…' and heredocs
    NUMBER = "number"
    SEMICOLON = "semicolon"
    OPEN = "("
    CLOSE = ")"
    DOT = "."
    SYMBOL = "symbol"  # operators and the other punctuation


@dataclass(frozen=True, slots=True)
class Token:
    kind: Kind
    text: str
    start: int

    @property
    def end(self) -> int:
        return self.start + len(self.text)

    @property
    def significant(self) -> bool:
        return self.kind not in (Kind.SPACE, Kind.COMMENT)


_SPACE = " \t\n\r\f\v"
_DIGITS = "0123456789"
_HEX = "0123456789abcdefABCDEF"
_WORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_QUOTES = {"'": Kind.STRING, '"': Kind.QUOTED_NAME, "`": Kind.QUOTED_NAME}
_SINGLE = {"(": Kind.OPEN, ")": Kind.CLOSE, ";": Kind.SEMICOLON}
# the operators of one or two characters; a lone ``!`` or ``\`` is an error to ClickHouse
_PAIRS = ("!=", "==", "<=", "<>", ">=", "::", "||", "@@", "->")
_SYMBOLS = frozenset("[]{},+*%=<>?:|@-/")
# after these a digit following a dot is a tuple index (t.1), not a number (.1)
_BEFORE_DOT_ACCESS = (Kind.CLOSE, Kind.WORD, Kind.QUOTED_NAME, Kind.NUMBER)


def tokenize(sql: str) -> list[Token]:
    """The tokens of ``sql``, every character in one; QueryError where ClickHouse would see an
    error (an unterminated string or comment, a stray character) or versions disagree."""
    tokens: list[Token] = []
    previous: Kind | None = None  # the last significant token's kind
    position = 0
    while position < len(sql):
        kind, end = _next(sql, position, previous)
        token = Token(kind, sql[position:end], position)
        tokens.append(token)
        if token.significant:
            previous = kind
        position = end
    return tokens


def _next(sql: str, i: int, previous: Kind | None) -> tuple[Kind, int]:
    c = sql[i]
    n = len(sql)
    if c in _SPACE:
        end = i + 1
        while end < n and sql[end] in _SPACE:
            end += 1
        return Kind.SPACE, end
    if c in _DIGITS:
        return _number(sql, i, previous)
    if c in _QUOTES:
        return _QUOTES[c], _quoted(sql, i)
    if c in _SINGLE:
        return _SINGLE[c], i + 1
    if c == ".":
        if i > 0 and (not (i + 1 < n and sql[i + 1] in _DIGITS) or previous in _BEFORE_DOT_ACCESS):
            return Kind.DOT, i + 1
        return Kind.NUMBER, _fraction(sql, i + 1, exponent="eE")
    if sql.startswith(("--", "//"), i) or sql.startswith(("# ", "#!"), i):
        end = sql.find("\n", i)
        return Kind.COMMENT, n if end < 0 else end
    if sql.startswith("/*", i):
        return Kind.COMMENT, _block_comment(sql, i)
    if sql.startswith(_PAIRS, i):
        return Kind.SYMBOL, i + 2
    if c in _SYMBOLS:
        return Kind.SYMBOL, i + 1
    if c == "$":
        heredoc = _heredoc(sql, i)
        if heredoc is not None:
            return Kind.STRING, heredoc
        if i + 1 == n or sql[i + 1] not in _WORD:
            return Kind.SYMBOL, i + 1
    if c in "xXbB" and i + 2 < n and sql[i + 1] == "'":
        return Kind.STRING, _hex_or_binary(sql, i)
    if c in _WORD or c == "$":
        end = i + 1
        while end < n and (sql[end] in _WORD or sql[end] == "$"):
            end += 1
        return Kind.WORD, end
    if c == "#":
        raise QueryError(f"'#' at position {i} must be followed by a space to start a comment")
    if ord(c) > 127:
        raise QueryError(
            f"{c!r} at position {i}: characters outside ASCII are accepted only inside"
            " '…' strings, quoted names and comments"
        )
    raise QueryError(f"unexpected {c!r} at position {i}")


def _quoted(sql: str, i: int) -> int:
    quote = sql[i]
    position = i + 1
    while position < len(sql):
        c = sql[position]
        if c == "\\":
            position += 2
        elif c == quote:
            if sql.startswith(quote, position + 1):
                position += 2
            else:
                return position + 1
        else:
            position += 1
    raise QueryError(f"unterminated {quote} at position {i}")


def _block_comment(sql: str, i: int) -> int:
    depth = 0
    position = i
    while position + 2 <= len(sql):
        if sql.startswith("/*", position):
            depth += 1
            position += 2
        elif sql.startswith("*/", position):
            depth -= 1
            position += 2
            if depth == 0:
                return position
        else:
            position += 1
    raise QueryError(f"unterminated /* at position {i}")


def _heredoc(sql: str, i: int) -> int | None:
    """The end of the heredoc string starting at ``i``, or None if none starts there."""
    tag_end = sql.find("$", i + 1)
    if tag_end < 0:
        return None
    tag = sql[i : tag_end + 1]
    close = sql.find(tag, tag_end + 1)
    if close < 0:
        return None
    if not all(c in _WORD for c in tag[1:-1]):
        # older ClickHouse reads any text between two dollars as a tag, newer ones do not
        raise QueryError(f"heredoc tag {tag!r} at position {i} must be a word")
    return close + len(tag)


def _hex_or_binary(sql: str, i: int) -> int:
    digits = _HEX if sql[i] in "xX" else "01"
    position = i + 2
    while position < len(sql) and sql[position] in digits:
        position += 1
    if position >= len(sql) or sql[position] != "'":
        raise QueryError(f"malformed {sql[i]}'…' string at position {i}")
    return position + 1


def _number(sql: str, i: int, previous: Kind | None) -> tuple[Kind, int]:
    n = len(sql)
    if previous == Kind.DOT:
        # tuple access (t.1.2): only an integer, so that ".2" is not read as a fraction
        end = _digits(sql, i + 1, _DIGITS, start_of_block=False)
    else:
        digits = _DIGITS
        position = i + 1
        start_of_block = False
        if i + 2 < n and sql[i] == "0" and sql[i + 1] in "xXbB":
            hex_prefix = sql[i + 1] in "xX"
            if sql[i + 2] in (_HEX if hex_prefix else "01"):
                digits = _HEX if hex_prefix else _DIGITS
                position = i + 2
                start_of_block = True
        position = _digits(sql, position, digits, start_of_block)
        if position < n and sql[position] == ".":
            position = _digits(sql, position + 1, digits, start_of_block=True)
        exponent = "pP" if digits == _HEX else "eE"
        end = _exponent(sql, position, exponent)
    if end < n and sql[end] in _WORD:
        # 1identifier is a name to ClickHouse, 1.5e3x an error
        while end < n and sql[end] in _WORD:
            end += 1
        if not all(c in _WORD for c in sql[i:end]):
            raise QueryError(f"malformed number {sql[i:end]!r} at position {i}")
        return Kind.WORD, end
    return Kind.NUMBER, end


def _fraction(sql: str, position: int, exponent: str) -> int:
    return _exponent(sql, _digits(sql, position, _DIGITS, start_of_block=True), exponent)


def _exponent(sql: str, position: int, letters: str) -> int:
    n = len(sql)
    if position + 1 < n and sql[position] in letters:
        position += 1
        if position + 1 < n and sql[position] in "+-":
            position += 1
        position = _digits(sql, position, _DIGITS, start_of_block=True)
    return position


def _digits(sql: str, position: int, digits: str, start_of_block: bool) -> int:
    """Past the digits at ``position`` and the ``_`` separators between them (1_000)."""
    n = len(sql)
    while position < n:
        c = sql[position]
        separator = (
            c == "_" and not start_of_block and position + 1 < n and sql[position + 1] in digits
        )
        if c not in digits and not separator:
            break
        position += 1
        start_of_block = False
    return position
