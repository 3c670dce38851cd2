"""A small SOQL parser and evaluator for the fake org.

It accepts the subset the gateway writes (SELECT fields FROM object [WHERE ...]
[ORDER BY ...] [LIMIT n], with AND/OR/NOT, parentheses, = != < <= > >= IN, NOT IN, LIKE,
quoted strings with SOQL escapes, numbers, true/false/null, date and datetime literals),
and rejects anything else with Salesforce's ``MALFORMED_QUERY``. Parsing what the gateway
sends back into values is also how the tests prove its escaping round-trips.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<string>'(?:[^'\\]|\\.)*')
  | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2}))
  | (?P<date>\d{4}-\d{2}-\d{2})
  | (?P<number>-?\d+(?:\.\d+)?)
  | (?P<op><=|>=|!=|<>|=|<|>)
  | (?P<punct>[(),])
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    """,
    re.VERBOSE,
)
_UNESCAPE = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", "'": "'", '"': '"', "\\": "\\"}
_KEYWORDS = {
    "SELECT",
    "FROM",
    "WHERE",
    "AND",
    "OR",
    "NOT",
    "IN",
    "LIKE",
    "ORDER",
    "BY",
    "ASC",
    "DESC",
    "LIMIT",
    "NULLS",
    "FIRST",
    "LAST",
    "TRUE",
    "FALSE",
    "NULL",
}


class SoqlError(Exception):
    """``code`` is the errorCode Salesforce would answer with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    value: Any = None


def unescape(body: str) -> str:
    out = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\":
            if i + 1 >= len(body):
                raise SoqlError("MALFORMED_QUERY", "dangling backslash in string literal")
            nxt = body[i + 1]
            if nxt in ("%", "_"):
                out.append("\\" + nxt)  # kept: only LIKE gives them meaning
            elif nxt in _UNESCAPE:
                out.append(_UNESCAPE[nxt])
            else:
                raise SoqlError("MALFORMED_QUERY", f"invalid escape sequence \\{nxt}")
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match:
            raise SoqlError("MALFORMED_QUERY", f"unexpected character at {pos}: {text[pos]!r}")
        pos = match.end()
        kind = match.lastgroup or ""
        raw = match.group()
        if kind == "ws":
            continue
        if kind == "string":
            tokens.append(Token("value", raw, unescape(raw[1:-1])))
        elif kind == "datetime":
            iso = raw.replace("Z", "+00:00")
            tokens.append(Token("value", raw, dt.datetime.fromisoformat(iso)))
        elif kind == "date":
            tokens.append(Token("value", raw, dt.date.fromisoformat(raw)))
        elif kind == "number":
            tokens.append(Token("value", raw, float(raw) if "." in raw else int(raw)))
        elif kind == "word" and raw.upper() in _KEYWORDS:
            upper = raw.upper()
            if upper in ("TRUE", "FALSE", "NULL"):
                tokens.append(
                    Token("value", raw, {"TRUE": True, "FALSE": False, "NULL": None}[upper])
                )
            else:
                tokens.append(Token("kw", upper))
        else:
            tokens.append(Token(kind, raw))
    return tokens


Predicate = Callable[[Mapping[str, Any]], bool]


@dataclass(frozen=True)
class Query:
    sobject: str
    fields: tuple[str, ...]
    where: Predicate | None
    where_fields: tuple[str, ...]
    order_by: tuple[tuple[str, bool], ...]  # (field, descending)
    limit: int | None
    # The Ids the WHERE clause can match, when it names them (``Id IN (...)`` or ``Id = ...``
    # on its top-level AND): the rows looked up by Id, as Salesforce's index on Id finds
    # them, instead of every row of the object tested.
    ids: frozenset[str] | None = None


def get_path(record: Mapping[str, Any], path: str) -> Any:
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        if part in value:
            value = value[part]
            continue
        # SOQL names are case-insensitive
        match = next((k for k in value if k.lower() == part.lower()), None)
        value = value.get(match) if match is not None else None
    return value


def _sf_datetime(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    text = value.replace("Z", "+00:00")
    if re.search(r"[+-]\d{4}$", text):
        text = text[:-2] + ":" + text[-2:]
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _comparable(record_value: Any, literal: Any) -> tuple[Any, Any]:
    if isinstance(literal, dt.datetime):
        return _sf_datetime(record_value), literal
    if isinstance(literal, dt.date):
        return (str(record_value)[:10] if record_value is not None else None), literal.isoformat()
    return record_value, literal


def _like(value: Any, pattern: str) -> bool:
    if not isinstance(value, str):
        return False
    regex = ""
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            regex += re.escape(pattern[i + 1])
            i += 2
            continue
        regex += ".*" if ch == "%" else "." if ch == "_" else re.escape(ch)
        i += 1
    return re.fullmatch(regex, value, re.IGNORECASE | re.DOTALL) is not None


def _membership(vals: list[Any]) -> Callable[[Any], bool]:
    """``value IN (vals)``: a set look-up (an Id list of 200 against every row of a large
    object stays linear in the rows, as Salesforce's index on Id makes it)."""
    try:
        members = frozenset(vals)
    except TypeError:
        return lambda value: value in vals

    def among(value: Any) -> bool:
        try:
            return value in members
        except TypeError:
            return value in vals

    return among


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.where_fields: list[str] = []
        self.ids: dict[int, frozenset[str]] = {}  # id() of a predicate: the Ids it can match

    def peek(self) -> Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, kind: str, text: str | None = None) -> Token:
        tok = self.peek()
        if tok is None or tok.kind != kind or (text is not None and tok.text != text):
            found = tok.text if tok else "end of query"
            raise SoqlError("MALFORMED_QUERY", f"unexpected token: {found!r}")
        self.pos += 1
        return tok

    def accept(self, kind: str, text: str | None = None) -> bool:
        tok = self.peek()
        if tok is not None and tok.kind == kind and (text is None or tok.text == text):
            self.pos += 1
            return True
        return False

    def query(self) -> Query:
        self.take("kw", "SELECT")
        fields = [self.take("word").text]
        while self.accept("punct", ","):
            fields.append(self.take("word").text)
        self.take("kw", "FROM")
        sobject = self.take("word").text
        where = None
        if self.accept("kw", "WHERE"):
            where = self.expr()
        order: list[tuple[str, bool]] = []
        if self.accept("kw", "ORDER"):
            self.take("kw", "BY")
            while True:
                name = self.take("word").text
                desc = False
                if self.accept("kw", "DESC"):
                    desc = True
                else:
                    self.accept("kw", "ASC")
                if self.accept("kw", "NULLS") and not (
                    self.accept("kw", "FIRST") or self.accept("kw", "LAST")
                ):
                    raise SoqlError("MALFORMED_QUERY", "NULLS needs FIRST or LAST")
                order.append((name, desc))
                if not self.accept("punct", ","):
                    break
        limit = None
        if self.accept("kw", "LIMIT"):
            tok = self.take("value")
            if not isinstance(tok.value, int):
                raise SoqlError("MALFORMED_QUERY", "LIMIT takes an integer")
            limit = tok.value
        if self.peek() is not None:
            raise SoqlError("MALFORMED_QUERY", f"unexpected token: {self.peek().text!r}")  # type: ignore[union-attr]
        ids = self.ids.get(id(where)) if where is not None else None
        return Query(
            sobject, tuple(fields), where, tuple(self.where_fields), tuple(order), limit, ids
        )

    def _keyed(self, pred: Predicate, ids: frozenset[str] | None) -> Predicate:
        if ids is not None:
            self.ids[id(pred)] = ids
        return pred

    def expr(self) -> Predicate:
        left = self.term()
        while self.accept("kw", "OR"):
            right = self.term()
            one, other = self.ids.get(id(left)), self.ids.get(id(right))
            left = self._keyed(
                (lambda a, b: lambda r: a(r) or b(r))(left, right),
                one | other if one is not None and other is not None else None,
            )
        return left

    def term(self) -> Predicate:
        left = self.factor()
        while self.accept("kw", "AND"):
            right = self.factor()
            known = [k for k in (self.ids.get(id(left)), self.ids.get(id(right))) if k is not None]
            left = self._keyed(
                (lambda a, b: lambda r: a(r) and b(r))(left, right),
                frozenset.intersection(*known) if known else None,
            )
        return left

    def factor(self) -> Predicate:
        if self.accept("punct", "("):
            inner = self.expr()
            self.take("punct", ")")
            return inner
        if self.accept("kw", "NOT"):
            inner = self.factor()
            return lambda r: not inner(r)
        return self.comparison()

    def values(self) -> list[Any]:
        self.take("punct", "(")
        vals = [self.take("value").value]
        while self.accept("punct", ","):
            vals.append(self.take("value").value)
        self.take("punct", ")")
        return vals

    def comparison(self) -> Predicate:
        name = self.take("word").text
        self.where_fields.append(name)
        if self.accept("kw", "NOT"):
            self.take("kw", "IN")
            among = _membership(self.values())
            return lambda r: not among(get_path(r, name))
        if self.accept("kw", "IN"):
            vals = self.values()
            among = _membership(vals)
            return self._keyed(lambda r: among(get_path(r, name)), _id_values(name, vals))
        if self.accept("kw", "LIKE"):
            tok = self.take("value")
            if not isinstance(tok.value, str):
                raise SoqlError("MALFORMED_QUERY", "LIKE takes a string")
            pattern = tok.value
            return lambda r: _like(get_path(r, name), pattern)
        op = self.take("op").text
        literal = self.take("value").value
        ids = _id_values(name, [literal]) if op == "=" else None

        def check(r: Mapping[str, Any]) -> bool:
            left, right = _comparable(get_path(r, name), literal)
            if op == "=":
                return bool(left == right)
            if op in ("!=", "<>"):
                return bool(left != right)
            if left is None or right is None:
                return False
            return bool(
                {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[op]
            )

        return self._keyed(check, ids)


def _id_values(name: str, values: list[Any]) -> frozenset[str] | None:
    """The Ids a comparison on ``Id`` names (None: another field, or not all text)."""
    if name.lower() != "id" or not all(isinstance(v, str) for v in values):
        return None
    return frozenset(values)


def parse(text: str) -> Query:
    return _Parser(tokenize(text)).query()
