"""The rule query language: parser and evaluator.

    query    := or_expr
    or_expr  := and_expr ("OR" and_expr)*
    and_expr := unary (["AND"] unary)*             adjacent terms are ANDed
    unary    := "NOT" unary | near
    near     := atom ("NEAR/n" atom)?              operands: terms, phrases, OR-groups
    atom     := "(" or_expr ")" | "ATLEAST/n" atom | field ":" atom | '"' phrase '"' | word
    field    := title | text | source | lang | tag

Words and phrases match whole words after normalisation (NFKC, case-folded,
accents folded); a trailing ``*`` is a prefix wildcard, also on any word of a
phrase (``"ban* export*"``); ``rare-earth`` is the phrase ``rare earth``. Terms
in scripts without spaces (Chinese, Japanese, Korean) match as substrings; a
Latin word written inside such text is a word of its own (``签署MoU`` holds the
word ``mou``). ``A NEAR/5 B``: both occur, in any order, with at most 5 words
between them (a run of CJK characters between punctuation counts as one word).
``ATLEAST/3 term``: the term occurs at least 3 times.
``title:``/``text:`` restrict a term or group to the title or body;
``case:US`` matches a word or phrase with its case as written (not "us");
``@minerals`` stands for a named list of the rule file (``lists:``) or of a shared
list file (``*.lists.yaml``) loaded with it;
``source:``, ``lang:`` and ``tag:`` test the item's source id (``*`` globs),
language (``lang:zh`` also matches ``zh-CN``) and tags. Operators are upper
case; ``and`` is a word.
"""

from __future__ import annotations

import bisect
import fnmatch
import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from watcher.errors import QuerySyntaxError
from watcher.text import CJK_RANGES, is_cjk, normalize, normalize_keep_case

# ---------------------------------------------------------------- tokens

_TOKEN_RE = re.compile(rf"[{CJK_RANGES}]+|[^\W{CJK_RANGES}]+")
_CJK_RUN = re.compile(rf"[{CJK_RANGES}]+")
_WORD_RE = re.compile(rf"[^\W{CJK_RANGES}]+")
_ASCII_TOKEN_RE = re.compile(r"\w+", re.ASCII)  # the same tokens, faster, on ASCII text
# ASCII bytes that are not word characters, as spaces: translate + split is \w+ without a regex.
_ASCII_SPACES = bytes(
    c if chr(c).isascii() and (chr(c).isalnum() or c == ord("_")) else ord(" ") for c in range(256)
)

TEXT_FIELDS = ("title", "text")
META_FIELDS = ("source", "lang", "tag")
FIELDS = (*TEXT_FIELDS, *META_FIELDS, "case")
MAX_DISTANCE = 1000


_ASCII_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_LATIN_CHAR = re.compile(rf"[^\W{CJK_RANGES}]")
# How many times a word is found inside longer words before `has_word` builds the word set.
_SCAN_MAX = 8


def _joins(char: str) -> bool:
    """Whether a character continues a (non-CJK) word, as the tokenisers split them."""
    return char in _ASCII_WORD_CHARS if char < "\x80" else _LATIN_CHAR.match(char) is not None


def query_words(normalized: str) -> list[str]:
    """The Latin-script (non-CJK) words of normalised text: how terms are split."""
    return _WORD_RE.findall(normalized)


def ascii_words(text: str) -> list[str]:
    """The tokens of ASCII text, as ``\\w+`` finds them, in half the time."""
    return text.encode("ascii").translate(_ASCII_SPACES).decode("ascii").split()


# ---------------------------------------------------------------- documents

if TYPE_CHECKING:
    _lazy = cached_property
else:

    class _lazy:
        """functools.cached_property without the lock that Python 3.11 takes on each use."""

        def __init__(self, func):
            self.func = func
            self.__doc__ = func.__doc__

        def __set_name__(self, owner, name):
            self.name = name

        def __get__(self, obj, owner=None):
            if obj is None:
                return self
            value = obj.__dict__[self.name] = self.func(obj)
            return value


@dataclass(frozen=True, slots=True)
class Meta:
    """What an item says about itself, for ``source:``, ``lang:`` and ``tag:``."""

    source: str = ""
    lang: str = ""
    tags: tuple[str, ...] = ()


def _meta(source: str, lang: str, tags: tuple[str, ...]) -> Meta:
    """An item's Meta (its language and tags normalised once for all the sources that
    share them: a cache by source held 4,096 Metas, none used twice when more sources
    than that are polled in turn)."""
    return Meta(source, *_normalized_meta(lang, tags))


@functools.lru_cache(maxsize=256)
def _normalized_meta(lang: str, tags: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    return normalize(lang), tuple(normalize(x) for x in tags)


class Document:
    """A text prepared once for evaluating any number of queries against it.

    Word positions run through the title, then the text; the ``title`` and
    ``text`` views keep those positions (``offset``), so ``title:a NEAR/3 b`` works.
    """

    def __init__(
        self,
        normalized: str,
        meta: Meta = Meta(),
        *,
        offset: int = 0,
        title_end: int = 0,
        raw: tuple[str, str] | None = None,
    ) -> None:
        self.normalized = normalized
        self._raw = raw  # (title, text) as written, for case-sensitive terms
        self.meta = meta
        self.offset = offset
        self._title_end = title_end  # chars of `normalized` that belong to the title
        self.ascii = normalized.isascii()
        self._token_re = _ASCII_TOKEN_RE if self.ascii else _TOKEN_RE
        self._fields: dict[str, Document] = {}

    @classmethod
    def from_text(cls, text: str) -> Document:
        """A document with a body only (no title, no metadata)."""
        return cls(normalize(text), raw=("", text))

    @classmethod
    def from_parts(
        cls,
        *,
        title: str = "",
        text: str = "",
        source: str = "",
        lang: str = "",
        tags: Sequence[str] = (),
    ) -> Document:
        t = normalize(title)
        meta = _meta(source, lang, tuple(tags))
        if not t:
            return cls(normalize(text), meta, raw=("", text))
        return cls(f"{t}\n{normalize(text)}", meta, title_end=len(t), raw=(title, text))

    def field(self, name: str) -> Document:
        """The title or the text alone, keeping word positions."""
        view = self._fields.get(name)
        if view is None:
            raw = self._raw
            if name == "title":
                view = Document(
                    self.normalized[: self._title_end],
                    self.meta,
                    offset=self.offset,
                    raw=(raw[0], "") if raw else None,
                )
            else:
                cut = self._title_end
                n_title = bisect.bisect_left(self.starts, cut) if cut else 0
                view = Document(
                    self.normalized[cut:],
                    self.meta,
                    offset=self.offset + n_title,
                    raw=("", raw[1]) if raw else None,
                )
            self._fields[name] = view
        return view

    @_lazy
    def words(self) -> tuple[str, ...]:
        """The words, in order (built when a test needs them: most need only `has_word`)."""
        if self.ascii:
            return tuple(ascii_words(self.normalized))
        return tuple(_TOKEN_RE.findall(self.normalized))

    @_lazy
    def ascii_keys(self) -> list[bytes]:
        """An ASCII document's words as bytes: what the prefilter looks up, made without
        decoding (only for ASCII text)."""
        return self.normalized.encode("ascii").translate(_ASCII_SPACES).split()

    @_lazy
    def starts(self) -> tuple[int, ...]:
        return tuple(m.start() for m in self._token_re.finditer(self.normalized))

    @_lazy
    def cased_words(self) -> tuple[str, ...]:
        """Words with their case kept (NFKC, accents folded): for ``case:`` terms."""
        if self._raw is None:
            return self.words
        text = "\n".join(part for part in self._raw if part)
        return tuple(_TOKEN_RE.findall(normalize_keep_case(text)))

    @_lazy
    def cased_word_set(self) -> frozenset[str]:
        return frozenset(self.cased_words)

    @_lazy
    def word_set(self) -> frozenset[str]:
        return frozenset(self.words)

    @_lazy
    def sorted_words(self) -> tuple[str, ...]:
        return tuple(sorted(self.word_set))

    def has_word(self, word: str) -> bool:
        """Whether a (non-CJK) word is one of the document's words.

        A substring search in C, then a look at the characters on either side,
        costs less than building the word set, which a document tested by a
        few rules does not need; a word found inside many longer ones falls
        back to the set.
        """
        text = self.normalized
        at = text.find(word)
        if at < 0:
            return False
        known = self.__dict__.get("word_set")
        if known is not None:
            return word in known
        size, end = len(word), len(text)
        for _ in range(_SCAN_MAX):
            after = at + size
            if (at == 0 or not _joins(text[at - 1])) and (after == end or not _joins(text[after])):
                return True
            at = text.find(word, at + 1)
            if at < 0:
                return False
        return word in self.word_set

    def has_prefix(self, prefix: str) -> bool:
        """Whether a word of the document starts with `prefix` (a non-CJK word)."""
        text = self.normalized
        at = text.find(prefix)
        for _ in range(_SCAN_MAX):
            if at < 0:
                return False
            if at == 0 or not _joins(text[at - 1]):
                return True
            at = text.find(prefix, at + 1)
        words = self.sorted_words
        i = bisect.bisect_left(words, prefix)
        return i < len(words) and words[i].startswith(prefix)

    def token_at(self, char: int) -> int:
        """The index of the token holding (or preceding) a character offset."""
        return max(0, bisect.bisect_right(self.starts, char) - 1)


Span = tuple[int, int]  # first and last word position, inclusive


# ---------------------------------------------------------------- AST


@dataclass(frozen=True)
class Term:
    """A word or phrase: a sequence of (word, is_prefix) parts, or a CJK substring."""

    parts: tuple[tuple[str, bool], ...]
    cjk: str = ""
    source: str = field(default="", compare=False)

    def matches(self, doc: Document) -> bool:
        if self.cjk:
            return self.cjk in doc.normalized
        if len(self.parts) == 1:
            word, prefix = self.parts[0]
            return doc.has_prefix(word) if prefix else doc.has_word(word)
        if not all((doc.has_prefix(w) if p else doc.has_word(w)) for w, p in self.parts):
            return False
        return bool(self.spans(doc, first_only=True))

    def spans(self, doc: Document, *, first_only: bool = False) -> list[Span]:
        out: list[Span] = []
        if self.cjk:
            start = doc.normalized.find(self.cjk)
            while start >= 0:
                first = doc.token_at(start)
                last = doc.token_at(start + len(self.cjk) - 1)
                out.append((first + doc.offset, last + doc.offset))
                if first_only:
                    break
                start = doc.normalized.find(self.cjk, start + len(self.cjk))
            return out
        word, prefix = self.parts[0]
        if not (doc.has_prefix(word) if prefix else doc.has_word(word)):
            return out
        words = doc.words
        if prefix:
            starts = [i for i, w in enumerate(words) if w.startswith(word)]
        else:
            starts = [i for i, w in enumerate(words) if w == word]
        n = len(self.parts)
        for i in starts:
            if i + n <= len(words) and all(
                (words[i + k].startswith(w) if p else words[i + k] == w)
                for k, (w, p) in enumerate(self.parts[1:], 1)
            ):
                out.append((i + doc.offset, i + n - 1 + doc.offset))
                if first_only:
                    break
        return out

    def __str__(self) -> str:
        return self.source


@dataclass(frozen=True)
class Scope:
    """``title:`` or ``text:`` around a term or group."""

    name: str
    child: Node

    def matches(self, doc: Document) -> bool:
        return self.child.matches(doc.field(self.name))

    def spans(self, doc: Document) -> list[Span]:
        return spans_of(self.child, doc.field(self.name))

    def __str__(self) -> str:
        return f"{self.name}:{_wrap(self.child, Term)}"


@dataclass(frozen=True)
class Cased:
    """``case:US``: a word or phrase that must match with its case as written."""

    words: tuple[str, ...]
    source: str = field(default="", compare=False)

    def matches(self, doc: Document) -> bool:
        words = self.words
        if len(words) == 1:
            return words[0] in doc.cased_word_set
        if not all(w in doc.cased_word_set for w in words):
            return False
        seq = doc.cased_words
        n = len(words)
        return any(seq[i : i + n] == words for i in range(len(seq) - n + 1))

    def __str__(self) -> str:
        return f"case:{self.source}"


@dataclass(frozen=True)
class MetaTest:
    """``source:x``, ``lang:x`` or ``tag:x``: a test of the item's metadata."""

    name: str
    value: str

    def matches(self, doc: Document) -> bool:
        meta = doc.meta
        if self.name == "source":
            return fnmatch.fnmatchcase(meta.source.casefold(), self.value)
        if self.name == "lang":
            return meta.lang == self.value or meta.lang.startswith(self.value + "-")
        return self.value in meta.tags

    def __str__(self) -> str:
        return f"{self.name}:{_show(self.value)}"


@dataclass(frozen=True)
class Near:
    left: Node
    right: Node
    distance: int

    def matches(self, doc: Document) -> bool:
        left = spans_of(self.left, doc)
        if not left:
            return False
        right = spans_of(self.right, doc)
        n = self.distance
        return any(max(b0 - a1, a0 - b1) - 1 <= n for a0, a1 in left for b0, b1 in right)

    def __str__(self) -> str:
        return (
            f"{_wrap(self.left, Term, Scope)} NEAR/{self.distance} {_wrap(self.right, Term, Scope)}"
        )


@dataclass(frozen=True)
class AtLeast:
    count: int
    child: Node

    def matches(self, doc: Document) -> bool:
        return len(spans_of(self.child, doc)) >= self.count

    def __str__(self) -> str:
        return f"ATLEAST/{self.count} {_wrap(self.child, Term, Scope)}"


@dataclass(frozen=True)
class Not:
    child: Node

    def matches(self, doc: Document) -> bool:
        return not self.child.matches(doc)

    def __str__(self) -> str:
        return f"NOT {_wrap(self.child, Term, Scope, Cased, MetaTest, AtLeast, Not)}"


@dataclass(frozen=True)
class And:
    children: tuple[Node, ...]

    def matches(self, doc: Document) -> bool:
        return all(c.matches(doc) for c in self.children)

    def __str__(self) -> str:
        return " AND ".join(
            _wrap(c, Term, Scope, Cased, MetaTest, AtLeast, Not, Near) for c in self.children
        )


@dataclass(frozen=True)
class Or:
    children: tuple[Node, ...]

    def matches(self, doc: Document) -> bool:
        return any(c.matches(doc) for c in self.children)

    def __str__(self) -> str:
        return " OR ".join(
            _wrap(c, Term, Scope, Cased, MetaTest, AtLeast, Not, Near, And) for c in self.children
        )


Node = Term | Scope | Cased | MetaTest | Near | AtLeast | Not | And | Or


def _wrap(node: Node, *bare: type) -> str:
    return str(node) if isinstance(node, bare) else f"({node})"


def is_positional(node: Node) -> bool:
    """Whether a node has word positions: a term, a scoped term, or an OR of those."""
    if isinstance(node, Term):
        return True
    if isinstance(node, Scope):
        return is_positional(node.child)
    if isinstance(node, Or):
        return all(is_positional(c) for c in node.children)
    return False


def spans_of(node: Node, doc: Document) -> list[Span]:
    """Where a positional node occurs in a document (distinct spans, sorted)."""
    if isinstance(node, Term | Scope):
        return node.spans(doc)
    if isinstance(node, Or):
        return sorted({s for c in node.children for s in spans_of(c, doc)})
    raise TypeError(f"not a positional node: {node}")  # pragma: no cover - the parser checks


Test = Callable[[Document], bool]


def compile_test(node: Node) -> Test:
    """`node.matches` as a closure: an OR of plain words is one set test in C, an AND
    of tests runs without walking the tree, and the rest is the node's own method."""
    if isinstance(node, Term) and not node.cjk and len(node.parts) == 1:
        word, prefix = node.parts[0]
        if prefix:
            return lambda doc: doc.has_prefix(word)
        return lambda doc: doc.has_word(word)
    if isinstance(node, Or):
        plain = [c for c in node.children if _plain_word(c)]
        words = tuple(dict.fromkeys(c.parts[0][0] for c in plain if isinstance(c, Term)))
        rest = [compile_test(c) for c in node.children if not _plain_word(c)]
        if not rest:
            return lambda doc: any(map(doc.has_word, words))
        if not words:
            return lambda doc: any(test(doc) for test in rest)
        return lambda doc: any(map(doc.has_word, words)) or any(test(doc) for test in rest)
    if isinstance(node, And):
        tests = [compile_test(c) for c in node.children]
        if len(tests) == 2:
            first, second = tests
            return lambda doc: first(doc) and second(doc)
        return lambda doc: all(test(doc) for test in tests)
    if isinstance(node, Not):
        inner = compile_test(node.child)
        return lambda doc: not inner(doc)
    return node.matches


def _plain_word(node: Node) -> bool:
    return isinstance(node, Term) and not node.cjk and len(node.parts) == 1 and not node.parts[0][1]


# ---------------------------------------------------------------- lexer

_OPERATORS = frozenset({"AND", "OR", "NOT"})
_COUNTED = re.compile(r"(NEAR|ATLEAST)(?:/(\d*))?(.*)$", re.S)
_TOKEN = re.compile(
    r'\s*(?:(?P<paren>[()])|"(?P<quoted>[^"]*)"|(?P<open>")'
    r"|(?P<field>[a-z]+):|@(?P<list>[^\s()\"]*)|(?P<word>[^\s()\"]+))"
)
_BARE = re.compile(r'[^\s()":@]+')
LIST_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")


@dataclass(frozen=True)
class _Tok:
    kind: str  # "(", ")", "AND", "OR", "NOT", "NEAR", "ATLEAST", "field", "word", "phrase", "end"
    text: str
    column: int  # 1-based
    number: int = 0
    end: int = 0  # 1-based column just after the token
    begin: int = 0  # 1-based column of the token's first character (its quote, if any)


def _counted(word: str, column: int, end: int) -> _Tok | None:
    m = _COUNTED.match(word)
    if m is None:
        return None
    op, digits, rest = m.group(1), m.group(2), m.group(3)
    if m.group(2) is None and rest:
        return None  # a word that merely starts with NEAR/ATLEAST, e.g. NEARBY
    example = "NEAR/5" if op == "NEAR" else "ATLEAST/3"
    if not digits or rest:
        raise QuerySyntaxError(f"{op} needs a number, e.g. {example}", column=column)
    number = int(digits)
    low = 0 if op == "NEAR" else 1
    if not low <= number <= MAX_DISTANCE:
        raise QuerySyntaxError(
            f"{op}/{digits}: the number must be between {low} and {MAX_DISTANCE}", column=column
        )
    return _Tok(op, word, column, number, end)


def _lex(query: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(query):
        m = _TOKEN.match(query, pos)
        if m is None or m.end() == pos:  # only trailing whitespace is left
            break
        start = m.start(m.lastgroup or 0) + 1
        end = m.end() + 1
        begin = len(m.group(0)) - len(m.group(0).lstrip()) + pos + 1
        if m.group("paren"):
            out.append(_Tok(m.group("paren"), m.group("paren"), start, end=end, begin=begin))
        elif m.group("quoted") is not None:
            out.append(_Tok("phrase", m.group("quoted"), start, end=end, begin=begin))
        elif m.group("open"):
            raise QuerySyntaxError("unterminated quote", column=start)
        elif m.group("list") is not None:
            out.append(_Tok("list", m.group("list"), start - 1, end=end, begin=begin))
        elif m.group("field") is not None:
            name = m.group("field")
            if name not in FIELDS:
                raise QuerySyntaxError(
                    f"unknown field '{name}:' (fields: {', '.join(f + ':' for f in FIELDS)};"
                    " quote a phrase that holds ':')",
                    column=start,
                )
            out.append(_Tok("field", name, start, end=end, begin=begin))
        else:
            word = m.group("word")
            tok = _counted(word, start, end)
            if tok is None:
                kind = word if word in _OPERATORS else "word"
                tok = _Tok(kind, word, start, end=end, begin=begin)
            out.append(tok)
        pos = m.end()
    out.append(_Tok("end", "", len(query) + 1, end=len(query) + 1))
    return out


# ---------------------------------------------------------------- parser


def make_term(raw: str, column: int = 1) -> Term:
    """Compile a word or phrase as written in a query into a Term."""
    text = raw.strip()
    norm = normalize(text)
    if is_cjk(norm):
        return Term((), cjk=norm.replace(" ", "").replace("*", ""), source=_show(raw))
    parts: list[tuple[str, bool]] = []
    for chunk in norm.split():
        prefix = chunk.endswith("*")
        body = chunk.rstrip("*")
        if "*" in body:
            raise QuerySyntaxError(
                f"'*' is only allowed at the end of a word: '{raw}'", column=column
            )
        words = query_words(body)
        if prefix and (not words or not body[-1:].isalnum()):
            raise QuerySyntaxError(f"'*' must follow a letter or digit: '{raw}'", column=column)
        parts.extend((w, prefix and i == len(words) - 1) for i, w in enumerate(words))
    if not parts:
        raise QuerySyntaxError(f"term '{raw}' has no letters or digits", column=column)
    return Term(tuple(parts), source=_show(raw))


def _show(raw: str) -> str:
    bare = _BARE.fullmatch(raw) and raw not in _OPERATORS and _COUNTED.match(raw) is None
    return raw if bare else f'"{raw}"'


_MAX_DEPTH = 50  # levels of parentheses and NOT; the shipped rules use 4 at most


class _Parser:
    def __init__(self, query: str, lists: Mapping[str, Node]) -> None:
        self.lists = lists
        self.toks = _lex(query)
        self.i = 0
        self.scope = ""  # the enclosing title:/text: scope, if any
        self.depth = 0  # parentheses and NOTs open around the token being read

    def _deeper(self, column: int) -> None:
        """One more level of nesting: the parser, the compiler and the matcher recurse on
        it, and a query nested hundreds deep would end in Python's RecursionError, a
        traceback instead of an error that names the rule."""
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise QuerySyntaxError(
                f"nested too deeply (more than {_MAX_DEPTH} parentheses or NOTs)", column=column
            )

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
        while self.tok.kind in ("AND", "NOT", "(", "word", "phrase", "field", "ATLEAST", "list"):
            if self.tok.kind == "AND":
                self.i += 1
            children.append(self.unary())
        return children[0] if len(children) == 1 else And(tuple(children))

    def unary(self) -> Node:
        if self.tok.kind == "NOT":
            self._deeper(self.tok.column)
            self.i += 1
            node = Not(self.unary())
            self.depth -= 1
            return node
        return self.near()

    def near(self) -> Node:
        left_tok = self.tok
        left = self.atom()
        if self.tok.kind != "NEAR":
            return left
        op = self.tok
        self.i += 1
        right_tok = self.tok
        right = self.atom()
        for node, tok in ((left, left_tok), (right, right_tok)):
            if not is_positional(node):
                raise QuerySyntaxError(
                    f"{op.text}: each side must be a term, a phrase or an OR-group of them",
                    column=tok.column,
                )
        if self.tok.kind == "NEAR":
            raise QuerySyntaxError(
                f"{self.tok.text} cannot follow another NEAR: use (a NEAR/n b) AND (b NEAR/n c)",
                column=self.tok.column,
            )
        return Near(left, right, op.number)

    def atom(self) -> Node:
        tok = self.tok
        if tok.kind == "(":
            self._deeper(tok.column)
            self.i += 1
            if self.tok.kind == ")":
                raise QuerySyntaxError("empty parentheses", column=self.tok.column)
            node = self.or_expr()
            if self.tok.kind != ")":
                raise QuerySyntaxError(
                    f"expected ')' after '{self._prev_text()}'", column=self.tok.column
                )
            self.i += 1
            self.depth -= 1
            return node
        if tok.kind in ("word", "phrase"):
            self.i += 1
            return make_term(tok.text, tok.column)
        if tok.kind == "list":
            self.i += 1
            listed = self.lists.get(tok.text)
            if listed is None:
                known = ", ".join(f"@{n}" for n in sorted(self.lists)) or "none"
                raise QuerySyntaxError(
                    f"unknown list '@{tok.text}' (lists known to this file: {known})",
                    column=tok.column,
                )
            return listed
        if tok.kind == "ATLEAST":
            self.i += 1
            operand = self.tok
            child = self.atom()
            if not is_positional(child):
                raise QuerySyntaxError(
                    f"{tok.text}: expected a term, a phrase or an OR-group of them",
                    column=operand.column,
                )
            return AtLeast(tok.number, child)
        if tok.kind == "field":
            return self.field(tok)
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

    def field(self, tok: _Tok) -> Node:
        self.i += 1
        nxt = self.tok
        if nxt.begin != tok.end or nxt.kind not in ("word", "phrase", "("):
            what = "a value" if tok.text in (*META_FIELDS, "case") else "a term, a phrase or '('"
            raise QuerySyntaxError(f"expected {what} right after '{tok.text}:'", column=tok.end)
        if tok.text == "case":
            if nxt.kind == "(":
                raise QuerySyntaxError(
                    "'case:' takes one word or phrase, not a group", column=nxt.column
                )
            self.i += 1
            words = tuple(_TOKEN_RE.findall(normalize_keep_case(nxt.text)))
            if not words or "*" in nxt.text:
                raise QuerySyntaxError(
                    f"'case:' needs a word or phrase without '*': '{nxt.text}'", column=nxt.column
                )
            return Cased(words, _show(nxt.text))
        if tok.text in META_FIELDS:
            if nxt.kind == "(":
                raise QuerySyntaxError(
                    f"'{tok.text}:' takes one value, not a group", column=nxt.column
                )
            self.i += 1
            value = normalize(nxt.text.strip()) if tok.text != "source" else nxt.text.strip()
            if not value:
                raise QuerySyntaxError(f"'{tok.text}:' needs a value", column=nxt.column)
            return MetaTest(tok.text, value.casefold())
        if self.scope:
            raise QuerySyntaxError(
                f"'{tok.text}:' inside '{self.scope}:': scopes do not nest", column=tok.column
            )
        self.scope = tok.text
        try:
            child = self.atom()
        finally:
            self.scope = ""
        return Scope(tok.text, child)


def parse_query(query: str, *, lists: Mapping[str, Node] | None = None) -> Node:
    """Parse a query; raises QuerySyntaxError with a 1-based column.

    `lists` are named term lists (a rule file's `lists:`), used as ``@name``.
    """
    return _Parser(query, lists or {}).parse()
