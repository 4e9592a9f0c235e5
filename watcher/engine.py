"""The prefilter that makes thousands of rules cost little more than a few.

Every rule query is reduced to literal *triggers*: a whole word, a word prefix,
a CJK substring. A query needs one literal from each of its *requirement* sets
(``(a OR b) AND c NEAR/5 d`` needs one of {a, b}, and c, and d); a rule is
indexed under its two most selective sets, and is a *candidate* for a document
when both have a literal in it. Only candidates, plus the rules that need no
literal at all (``NOT rice``, ``lang:zh``), are evaluated. The prefilter only
ever drops rules that cannot match, so results are those of evaluating every
rule (tests/test_engine.py checks this on random rules).

The cost per document is one dictionary lookup per word, whatever the number
of rules: a memo maps each word seen to the rules whose word and prefix
literals it satisfies (computed the first time the word is seen, so prefixes
cost nothing after that), and the candidates are the intersection of two small
sets built in C from the postings of the words found. Plain-ASCII text is
looked up as bytes words (`Document.ascii_keys`), which cost less to make than
strings; the string words are made only when a test needs them. CJK substrings
are found by one Aho-Corasick pass (pyahocorasick) over text that is not plain
ASCII.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import ahocorasick

from watcher.query import (
    _CJK_RUN,
    And,
    AtLeast,
    Cased,
    Document,
    MetaTest,
    Near,
    Node,
    Not,
    Or,
    Scope,
    Term,
)
from watcher.text import is_cjk, normalize

Triggers = frozenset[str] | None  # None: the query can be true without any literal
Requirements = list[frozenset[str]]  # every set must have a literal in the text
# The rules a literal serves: rule i as i when it is the rule's first requirement,
# as i + n (n rules) when it is its second.
Postings = frozenset[int]
K = TypeVar("K", str, bytes)
_EMPTY: Postings = frozenset()

# A rule is indexed under its two most selective sets; evaluation does the rest.
MAX_REQUIREMENTS = 2
# The word memo holds the rules' own words and at most this many others (~100 bytes
# each, twice for ASCII words); past that it is cleared, so words seen once (numbers,
# names) do not pile up in a long-running service, and the rest are worked out again.
MEMO_EXTRA_WORDS = 20_000


def term_trigger(term: Term) -> str:
    """The literal to look for: 'word' (a whole word), ' prefix' or a CJK substring."""
    if term.cjk:
        return max(_CJK_RUN.findall(term.cjk), key=len, default=term.cjk)
    word, prefix = max(term.parts, key=lambda p: (not p[1], len(p[0])))
    return f" {word}" if prefix else word


def triggers(node: Node) -> Triggers:
    """Literals of which at least one occurs whenever `node` is true."""
    if isinstance(node, Term):
        return frozenset({term_trigger(node)})
    if isinstance(node, Scope | AtLeast):
        return triggers(node.child)
    if isinstance(node, Cased):  # found case-insensitively: a superset, as it must be
        return frozenset({normalize(max(node.words, key=len))})
    if isinstance(node, MetaTest | Not):
        return None
    if isinstance(node, Or):
        out: set[str] = set()
        for child in node.children:
            t = triggers(child)
            if t is None:
                return None
            out |= t
        return frozenset(out)
    options = requirements(node)
    if not options:
        return None
    return min(options, key=_selectivity)  # any one required set will do


def _selectivity(literals: frozenset[str]) -> tuple[int, int]:
    """Sort key: few, long literals first (long words are rarer in text)."""
    return len(literals), -min(len(s) for s in literals)


def requirements(node: Node) -> Requirements:
    """Sets of literals that must all be hit (one literal from each) for `node` to be true."""
    if isinstance(node, And):
        return [r for child in node.children for r in requirements(child)]
    if isinstance(node, Near):
        return requirements(node.left) + requirements(node.right)
    if isinstance(node, Scope | AtLeast):
        return requirements(node.child)
    t = triggers(node)
    return [] if t is None else [t]


def _postings(nodes: Sequence[Node]) -> tuple[dict[str, Postings], tuple[int, ...]]:
    """Each literal's postings, and the rules that need no literal."""
    n = len(nodes)
    table: dict[str, set[int]] = {}
    always: list[int] = []
    for index, node in enumerate(nodes):
        reqs = sorted(dict.fromkeys(requirements(node)), key=_selectivity)[:MAX_REQUIREMENTS]
        if not reqs:
            always.append(index)
            continue
        for literal in reqs[0]:
            table.setdefault(literal, set()).add(index)
        for literal in reqs[-1]:  # a single set serves as both
            table.setdefault(literal, set()).add(index + n)
    return {k: frozenset(v) for k, v in table.items()}, tuple(always)


class _Memo(dict[K, Postings]):
    """Word -> postings, worked out the first time a word is seen; cleared when too big."""

    def __init__(self, work_out: Callable[[K], Postings], max_words: int) -> None:
        super().__init__()
        self._work_out: Callable[[K], Postings] = work_out
        self.max_words = max_words

    def __missing__(self, word: K) -> Postings:
        if len(self) >= self.max_words:
            self.clear()
        value: Postings = self._work_out(word)
        self[word] = value
        return value


class Prefilter:
    """Finds, in one pass over a document's words, the rules (by index) that may match it."""

    def __init__(self, nodes: Sequence[Node]) -> None:
        literals, self.always = _postings(nodes)
        self.keys = len(literals)
        self._second = len(nodes)  # rule i's second requirement is posted as i + this
        self._words = {k: v for k, v in literals.items() if not k.startswith(" ") and not is_cjk(k)}
        by_length: dict[int, dict[str, Postings]] = {}
        for k, v in literals.items():
            if k.startswith(" "):
                by_length.setdefault(len(k) - 1, {})[k[1:]] = v
        self._prefixes = sorted(by_length.items())
        # The shortest prefix's length, and every prefix cut to it: most words fail this test.
        self._head = min(by_length, default=0)
        self._heads = frozenset(p[: self._head] for table in by_length.values() for p in table)
        max_words = len(self._words) + MEMO_EXTRA_WORDS
        self._memo: _Memo[str] = _Memo(self._word_postings, max_words)
        for word in self._words:  # the words known now; others are worked out when first seen
            self._memo[word] = self._word_postings(word)
        # ASCII documents' words, as bytes (see `Document.ascii_keys`)
        memo = self._memo
        self._ascii_memo: _Memo[bytes] = _Memo(lambda b: memo[b.decode("ascii")], max_words)
        for word, postings in self._memo.items():  # and as bytes, for ASCII documents
            if word.isascii():
                self._ascii_memo[word.encode("ascii")] = postings
        cjk = sorted(k for k in literals if not k.startswith(" ") and is_cjk(k))
        self._automaton: ahocorasick.Automaton | None = None
        if cjk:
            automaton = ahocorasick.Automaton()
            for key in cjk:
                automaton.add_word(key, literals[key])
            automaton.make_automaton()
            self._automaton = automaton

    def _word_postings(self, word: str) -> Postings:
        """The postings of every word and prefix literal that `word` satisfies."""
        found = []
        exact = self._words.get(word)
        if exact is not None:
            found.append(exact)
        size = len(word)
        if size < self._head or word[: self._head] not in self._heads:
            return found[0] if found else _EMPTY
        for length, table in self._prefixes:
            if length > size:
                break
            hit = table.get(word[:length])
            if hit is not None:
                found.append(hit)
        if len(found) <= 1:
            return found[0] if found else _EMPTY
        return _EMPTY.union(*found)

    def candidates(self, doc: Document) -> list[int]:
        if doc.ascii:
            posted = _EMPTY.union(*map(self._ascii_memo.__getitem__, doc.ascii_keys))
        else:
            posted = _EMPTY.union(*map(self._memo.__getitem__, doc.words))
            if self._automaton is not None:
                posted = posted.union(*(value for _, value in self._automaton.iter(doc.normalized)))
        if not posted:
            return list(self.always)
        # Rules with both requirements met: i and i + n both posted.
        n = self._second
        found = [i for i in posted if i < n and i + n in posted]
        if self.always:
            return sorted({*found, *self.always})
        found.sort()
        return found
