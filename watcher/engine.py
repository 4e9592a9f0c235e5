"""The prefilter that makes thousands of rules cost little more than a few.

Every rule query is reduced to literal *triggers*: a whole word, a word prefix,
a CJK substring. One pass over a document finds every trigger of every rule:
whole words by intersecting the document's word set with the index, prefixes
by their first PREFIX_CUT_CHARS characters the same way, and CJK substrings
and shorter prefixes by one Aho-Corasick pass (pyahocorasick) over its words
(skipped on ASCII text when there are no short prefixes). A query
needs one literal from each of its *requirement* sets (``(a OR b) AND c NEAR/5
d`` needs one of {a, b}, and c, and d; a rule is indexed under its two most
selective sets); only the rules whose indexed requirements are all met, plus
the rules that need no literal at all (``NOT rice``, ``lang:zh``), are evaluated.
The prefilter only ever drops rules that cannot match, so results are those of
evaluating every rule (tests/test_engine.py checks this on random rules).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import reduce
from operator import itemgetter, or_

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


MAX_REQUIREMENTS = (
    2  # a rule is indexed under its two most selective sets; evaluation does the rest
)


PREFIX_CUT_CHARS = 4  # prefix literals longer than this are looked up by their first 4 chars
_CUT = itemgetter(slice(0, PREFIX_CUT_CHARS))


def _bits(rules: Iterable[int]) -> int:
    out = 0
    for rule in rules:
        out |= 1 << rule
    return out


def _index(
    table: dict[str, list[int]], keep: set[str], key: Callable[[str], str]
) -> tuple[dict[str, int], frozenset[str]]:
    """Literal -> the rules it serves, as a bit set (bit i: rule i)."""
    out: dict[str, int] = {}
    for k, rules in table.items():
        if k in keep:
            out[key(k)] = out.get(key(k), 0) | _bits(rules)
    return out, frozenset(out)


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


def joined_words(doc: Document) -> str:
    """The document's words with a space before each: what prefixes are searched in."""
    return " " + " ".join(doc.words)


class Prefilter:
    """Finds, in one pass, the rules (by index) that may match a document.

    Each rule is indexed under its (at most) two most selective requirement
    sets: a rule is a candidate when a literal of its first set occurs and, if
    it has a second, a literal of that one too. Each literal maps to a bit set
    of rules (a Python int), so the lookups, ORs and the final AND run in C and
    the cost per document grows with the literals it contains, not with the
    number of rules.
    """

    def __init__(self, nodes: Sequence[Node]) -> None:
        first: dict[str, list[int]] = {}
        second: dict[str, list[int]] = {}
        always: list[int] = []
        single: list[int] = []
        for index, node in enumerate(nodes):
            reqs = sorted(dict.fromkeys(requirements(node)), key=_selectivity)[:MAX_REQUIREMENTS]
            if not reqs:
                always.append(index)
                continue
            if len(reqs) == 1:
                single.append(index)
            for table, req in zip((first, second), reqs, strict=False):
                for key in req:
                    table.setdefault(key, []).append(index)
        self.always = tuple(always)
        self.keys = len(first.keys() | second.keys())
        keys = first.keys() | second.keys()
        words = {k for k in keys if not k.startswith(" ") and not is_cjk(k)}
        heads = {k for k in keys if k.startswith(" ") and len(k) > PREFIX_CUT_CHARS}
        others = keys - words - heads  # CJK substrings and short prefixes
        self._tables = tuple(_index(t, words, lambda k: k) for t in (first, second))
        self._heads = tuple(
            _index(t, heads, lambda k: k[1 : PREFIX_CUT_CHARS + 1]) for t in (first, second)
        )
        self._short_prefixes = any(k.startswith(" ") for k in others)
        self._automaton: ahocorasick.Automaton | None = None
        if others:
            automaton = ahocorasick.Automaton()
            for key in others:
                automaton.add_word(key, (_bits(first.get(key, ())), _bits(second.get(key, ()))))
            automaton.make_automaton()
            self._automaton = automaton
        self._single_bits = _bits(single)

    def candidates(self, doc: Document) -> list[int]:
        words = doc.word_set
        heads = set(map(_CUT, words))
        met = [
            reduce(or_, map(htable.__getitem__, heads & hkeys), 0)
            | reduce(or_, map(table.__getitem__, words & keys), 0)
            for (table, keys), (htable, hkeys) in zip(self._tables, self._heads, strict=True)
        ]
        if self._automaton is not None and (self._short_prefixes or not doc.normalized.isascii()):
            for _end, (bits0, bits1) in self._automaton.iter(joined_words(doc)):
                met[0] |= bits0
                met[1] |= bits1
        hits = met[0] & (met[1] | self._single_bits)
        found = list(self.always)
        while hits:
            low = hits & -hits
            found.append(low.bit_length() - 1)
            hits ^= low
        if self.always:
            found.sort()
        return found
