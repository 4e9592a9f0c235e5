"""The prefilter that makes thousands of rules cost little more than a few.

Every rule query is reduced to literal *triggers*: a whole word, a word prefix,
a CJK substring. One pass over a document finds every trigger of every rule:
whole words by a set intersection with the document's words, prefixes and CJK
substrings by one Aho-Corasick pass (pyahocorasick) over its words. A query
needs one literal from each of its *requirement* sets (``(a OR b) AND c NEAR/5
d`` needs one of {a, b}, and c, and d; a rule is indexed under its two most
selective sets); only the rules whose indexed requirements are all met, plus
the rules that need no literal at all (``NOT rice``, ``lang:zh``), are evaluated.
The prefilter only ever drops rules that cannot match, so results are those of
evaluating every rule (tests/test_engine.py checks this on random rules).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import ahocorasick

from watcher.query import (
    _CJK_RUN,
    And,
    AtLeast,
    Document,
    MetaTest,
    Near,
    Node,
    Not,
    Or,
    Scope,
    Term,
)
from watcher.text import is_cjk

Triggers = frozenset[str] | None  # None: the query can be true without any literal
Requirements = list[frozenset[str]]  # every set must have a literal in the text


MAX_REQUIREMENTS = 2  # a rule is indexed under its most selective sets; evaluation does the rest


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

    Each rule needs a literal from every one of its requirement sets. Whole
    words are looked up in the document's word set; prefixes (' licen') and CJK
    substrings are found by one Aho-Corasick pass (pyahocorasick) over the
    document's words. Each literal maps to the requirement ids it satisfies.
    """

    def __init__(self, nodes: Sequence[Node]) -> None:
        by_key: dict[str, list[int]] = {}
        always: list[int] = []
        self._owner: list[int] = []  # requirement id -> rule index
        self._needs: list[int] = []  # rule index -> number of requirements
        for index, node in enumerate(nodes):
            reqs = sorted(dict.fromkeys(requirements(node)), key=_selectivity)[:MAX_REQUIREMENTS]
            self._needs.append(len(reqs))
            if not reqs:
                always.append(index)
            for req in reqs:
                req_id = len(self._owner)
                self._owner.append(index)
                for key in req:
                    by_key.setdefault(key, []).append(req_id)
        self.always = tuple(always)
        self.keys = len(by_key)
        self._words = {k: tuple(v) for k, v in by_key.items() if not k.startswith(" ")}
        self._words = {k: v for k, v in self._words.items() if not is_cjk(k)}
        self._word_keys = frozenset(self._words)
        self._automaton: ahocorasick.Automaton | None = None
        others = {k: tuple(v) for k, v in by_key.items() if k not in self._words}
        if others:
            automaton = ahocorasick.Automaton()
            for key, req_ids in others.items():
                automaton.add_word(key, req_ids)
            automaton.make_automaton()
            self._automaton = automaton

    def candidates(self, doc: Document) -> list[int]:
        met: set[int] = set()
        table = self._words
        for word in doc.word_set & self._word_keys:
            met.update(table[word])
        if self._automaton is not None:
            for _end, req_ids in self._automaton.iter(joined_words(doc)):
                met.update(req_ids)
        found = list(self.always)
        if met:
            needs = self._needs
            counts = Counter(map(self._owner.__getitem__, met))
            found.extend(rule for rule, n in counts.items() if n == needs[rule])
            found.sort()
        return found
