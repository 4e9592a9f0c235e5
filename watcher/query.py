"""The rule query language: parser and evaluator.

    query   := or_expr
    or_expr := and_expr ("OR" and_expr)*
    and_expr:= unary (["AND"] unary)*          adjacent terms are ANDed
    unary   := "NOT" unary | atom
    atom    := "(" or_expr ")" | '"' phrase '"' | word

Words and phrases match whole words after normalisation (NFKC, case-folded,
accents folded); a trailing ``*`` is a prefix wildcard; ``rare-earth`` is the
phrase ``rare earth``. Terms in scripts without spaces (Chinese, Japanese,
Korean) match as substrings. Operators are upper case; ``and`` is a word.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

from watcher.errors import QuerySyntaxError
from watcher.text import is_cjk, normalize, tokens

# ---------------------------------------------------------------- documents


@dataclass(frozen=True)
class Document:
    """A text prepared once for evaluating any number of queries against it."""

    normalized: str
    words: tuple[str, ...]

    @classmethod
    def from_text(cls, text: str) -> Document:
        norm = normalize(text)
        return cls(norm, tuple(tokens(norm)))

    @cached_property
    def word_set(self) -> frozenset[str]:
        return frozenset(self.words)

    @cached_property
    def positions(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for i, w in enumerate(self.words):
            out.setdefault(w, []).append(i)
        return out


# ---------------------------------------------------------------- AST


@dataclass(frozen=True)
class Term:
    """A word or phrase: a sequence of (word, is_prefix) parts, or a CJK substring."""

    parts: tuple[tuple[str, bool], ...]
    cjk: str = ""
    source: str = field(default="", compare=False)

    def _part_matches(self, doc: Document, index: int, part: tuple[str, bool]) -> bool:
        word, prefix = part
        w = doc.words[index]
        return w.startswith(word) if prefix else w == word

    def matches(self, doc: Document) -> bool:
        if self.cjk:
            return self.cjk in doc.normalized
        first, prefix = self.parts[0]
        if len(self.parts) == 1:
            if prefix:
                return any(w.startswith(first) for w in doc.word_set)
            return first in doc.word_set
        if prefix:
            starts = [i for i, w in enumerate(doc.words) if w.startswith(first)]
        else:
            starts = doc.positions.get(first, [])
        n = len(doc.words)
        for i in starts:
            if i + len(self.parts) <= n and all(
                self._part_matches(doc, i + k, p) for k, p in enumerate(self.parts[1:], 1)
            ):
                return True
        return False

    def __str__(self) -> str:
        return self.source


@dataclass(frozen=True)
class Not:
    child: Node

    def matches(self, doc: Document) -> bool:
        return not self.child.matches(doc)

    def __str__(self) -> str:
        return f"NOT {_wrap(self.child)}"


@dataclass(frozen=True)
class And:
    children: tuple[Node, ...]

    def matches(self, doc: Document) -> bool:
        return all(c.matches(doc) for c in self.children)

    def __str__(self) -> str:
        return " AND ".join(_wrap(c) for c in self.children)


@dataclass(frozen=True)
class Or:
    children: tuple[Node, ...]

    def matches(self, doc: Document) -> bool:
        return any(c.matches(doc) for c in self.children)

    def __str__(self) -> str:
        return " OR ".join(_wrap(c) for c in self.children)


Node = Term | Not | And | Or


def _wrap(node: Node) -> str:
    return f"({node})" if isinstance(node, And | Or) else str(node)


# ---------------------------------------------------------------- lexer

_OPERATORS = frozenset({"AND", "OR", "NOT"})
_TOKEN = re.compile(r'\s*(?:(?P<paren>[()])|"(?P<quoted>[^"]*)"|(?P<open>")|(?P<word>[^\s()"]+))')


@dataclass(frozen=True)
class _Tok:
    kind: str  # "(", ")", "AND", "OR", "NOT", "word", "phrase", "end"
    text: str
    column: int  # 1-based


def _lex(query: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(query):
        m = _TOKEN.match(query, pos)
        if m is None or m.end() == pos:  # only trailing whitespace is left
            break
        start = m.start(m.lastgroup or 0) + 1
        if m.group("paren"):
            out.append(_Tok(m.group("paren"), m.group("paren"), start))
        elif m.group("quoted") is not None:
            out.append(_Tok("phrase", m.group("quoted"), start))
        elif m.group("open"):
            raise QuerySyntaxError("unterminated quote", column=start)
        else:
            word = m.group("word")
            out.append(_Tok(word if word in _OPERATORS else "word", word, start))
        pos = m.end()
    out.append(_Tok("end", "", len(query) + 1))
    return out


# ---------------------------------------------------------------- parser


def make_term(raw: str, column: int = 1) -> Term:
    """Compile a word or phrase as written in a query into a Term."""
    text = raw.strip()
    prefix = text.endswith("*")
    body = text.rstrip("*")
    if "*" in body:
        raise QuerySyntaxError(f"'*' is only allowed at the end of a term: '{raw}'", column=column)
    norm = normalize(body)
    if is_cjk(norm):
        return Term((), cjk=norm.replace(" ", ""), source=_show(raw))
    words = tokens(norm)
    if not words:
        raise QuerySyntaxError(f"term '{raw}' has no letters or digits", column=column)
    parts = tuple((w, prefix and i == len(words) - 1) for i, w in enumerate(words))
    return Term(parts, source=_show(raw))


def _show(raw: str) -> str:
    return f'"{raw}"' if any(c.isspace() for c in raw) or raw in _OPERATORS else raw


class _Parser:
    def __init__(self, query: str) -> None:
        self.toks = _lex(query)
        self.i = 0

    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def _prev_text(self) -> str:
        return self.toks[self.i - 1].text if self.i else ""

    def parse(self) -> Node:
        if self.tok.kind == "end":
            raise QuerySyntaxError("empty query", column=1)
        node = self.or_expr()
        if self.tok.kind == ")":
            raise QuerySyntaxError("unbalanced ')'", column=self.tok.column)
        if self.tok.kind != "end":  # pragma: no cover - every other token starts a unary
            raise QuerySyntaxError(f"unexpected '{self.tok.text}'", column=self.tok.column)
        return node

    def or_expr(self) -> Node:
        children = [self.and_expr()]
        while self.tok.kind == "OR":
            self.i += 1
            children.append(self.and_expr())
        return children[0] if len(children) == 1 else Or(tuple(children))

    def and_expr(self) -> Node:
        children = [self.unary()]
        while self.tok.kind in ("AND", "NOT", "(", "word", "phrase"):
            if self.tok.kind == "AND":
                self.i += 1
            children.append(self.unary())
        return children[0] if len(children) == 1 else And(tuple(children))

    def unary(self) -> Node:
        if self.tok.kind == "NOT":
            self.i += 1
            return Not(self.unary())
        return self.atom()

    def atom(self) -> Node:
        tok = self.tok
        if tok.kind == "(":
            self.i += 1
            if self.tok.kind == ")":
                raise QuerySyntaxError("empty parentheses", column=self.tok.column)
            node = self.or_expr()
            if self.tok.kind != ")":
                raise QuerySyntaxError(
                    f"expected ')' after '{self._prev_text()}'", column=self.tok.column
                )
            self.i += 1
            return node
        if tok.kind in ("word", "phrase"):
            self.i += 1
            return make_term(tok.text, tok.column)
        if tok.kind == "end":
            after = self._prev_text()
            raise QuerySyntaxError(
                f"expected a term after '{after}'" if after else "expected a term",
                column=tok.column,
            )
        if tok.kind == ")":
            raise QuerySyntaxError(
                "expected a term before ')'"
                + (f" (after '{self._prev_text()}')" if self.i else ""),
                column=tok.column,
            )
        raise QuerySyntaxError(f"expected a term, found '{tok.text}'", column=tok.column)


def parse_query(query: str) -> Node:
    """Parse a query; raises QuerySyntaxError with a 1-based column."""
    return _Parser(query).parse()
