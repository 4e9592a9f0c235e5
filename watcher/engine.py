"""The prefilter that makes thousands of rules cost little more than a few.

Every rule query is reduced to a set of literal *triggers*: strings of which at
least one must occur in a text for the query to be true (a word, a word prefix,
a CJK substring). One Aho-Corasick pass (pyahocorasick) over a document's words
finds every trigger of every rule; only the rules whose triggers occur, plus the
rules that need no literal at all (``NOT rice``, ``lang:zh``), are evaluated.
The prefilter only ever drops rules that cannot match, so results are those of
evaluating every rule (tests/test_engine.py checks this on random rules).
"""

from __future__ import annotations

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

Triggers = frozenset[str] | None  # None: the query can be true without any literal


def term_trigger(term: Term) -> str:
    """The literal to search for: ' word ' (whole word), ' prefix' or a CJK substring."""
    if term.cjk:
        return max(_CJK_RUN.findall(term.cjk), key=len, default=term.cjk)
    word, prefix = max(term.parts, key=lambda p: (not p[1], len(p[0])))
    return f" {word}" if prefix else f" {word} "


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
    children = (node.left, node.right) if isinstance(node, Near) else node.children
    assert isinstance(node, And | Near)
    options = [t for t in (triggers(c) for c in children) if t is not None]
    if not options:
        return None
    # Any one required child will do: prefer few, long literals (rarer in text).
    return min(options, key=lambda t: (len(t), -min(len(s) for s in t)))


def joined_words(doc: Document) -> str:
    """The document's words with one space around each: what triggers are searched in."""
    return f" {' '.join(doc.words)} "


class Prefilter:
    """Finds, in one pass, the rules (by index) that may match a document."""

    def __init__(self, nodes: Sequence[Node]) -> None:
        self.always: tuple[int, ...] = ()
        by_key: dict[str, list[int]] = {}
        always: list[int] = []
        for index, node in enumerate(nodes):
            keys = triggers(node)
            if keys is None:
                always.append(index)
                continue
            for key in keys:
                by_key.setdefault(key, []).append(index)
        self.always = tuple(always)
        self.keys = len(by_key)
        self._automaton: ahocorasick.Automaton | None = None
        if by_key:
            automaton = ahocorasick.Automaton()
            for key, indexes in by_key.items():
                automaton.add_word(key, tuple(indexes))
            automaton.make_automaton()
            self._automaton = automaton

    def candidates(self, doc: Document) -> list[int]:
        found: set[int] = set(self.always)
        if self._automaton is not None:
            for _end, indexes in self._automaton.iter(joined_words(doc)):
                found.update(indexes)
        return sorted(found)
