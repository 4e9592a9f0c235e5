from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from watcher.errors import QuerySyntaxError
from watcher.query import Document, parse_query


def m(query: str, text: str) -> bool:
    return parse_query(query).matches(Document.from_text(text))


def md(query: str, **parts: str) -> bool:
    tags = parts.pop("tags", "")
    return parse_query(query).matches(
        Document.from_parts(tags=tags.split() if tags else (), **parts)
    )


@pytest.mark.parametrize(
    ("query", "text", "expected"),
    [
        ("gallium", "Gallium exports", True),
        ("gallium", "gallium-arsenide wafers", True),
        ("gall", "gallium exports", False),  # whole words only
        ("licen*", "new licensing regime", True),
        ("licen*", "a license", True),
        ('"export control*"', "tighter export controls", True),
        ('"export control"', "export of control units", False),
        ("rare-earth", "rare earth magnets", True),
        ("rare-earth", "rare-earth magnets", True),
        ('"rare earth*"', "rare-earths", True),
        ("rare-earth*", "rare-earths", True),
        ("Exportación", "nueva exportacion de litio", True),
        ("EXPORTACIÓN", "Nueva EXPORTACIÓN de litio", True),
        ("ﬁnance", "finance ministry", True),  # NFKC: the ligature is "fi"
        ("straße", "STRASSE", True),  # casefold
        ("稀土", "商务部公告稀土出口管制", True),
        ("輸出管理", "半導体の輸出管理を強化", True),
        ("ｇａｌｌｉｕｍ", "gallium", True),  # full-width Latin
        ('稀土 OR "rare earth"', "rare earth", True),
        ("a OR b AND c", "a", True),  # AND binds tighter than OR
        ("a OR b AND c", "b", False),
        ("(a OR b) AND c", "a", False),
        ("NOT rice", "rice export ban", False),
        ("export NOT rice", "gallium export ban", True),
        ("export AND NOT (rice OR wheat)", "wheat export ban", False),
        ("tariff mineral*", "a tariff on critical minerals", True),  # implicit AND
        ("tariff mineral*", "a tariff on steel", False),
        ("and", "this and that", True),  # lower-case operators are words
        # wildcards inside phrases
        ('"ban* export*"', "Beijing bans exports of gallium", True),
        ('"ban* export*"', "a banner exported", True),
        ('"ban* export*"', "bans on exports", False),
        ('"ban* on the export*"', "ban on the exportation", True),
        # Latin words inside CJK text are words of their own
        ("MoU", "中美签署MoU合作", True),
        ('"签署 MoU"', "中美签署MoU合作", True),
        ("mou", "中美签署Mouse合作", False),
        # NEAR: any order, at most n words between
        ("export NEAR/2 gallium", "export of gallium", True),
        ("export NEAR/2 gallium", "gallium export", True),
        ("export NEAR/1 gallium", "export of the gallium", False),
        ("export NEAR/2 gallium", "export of the gallium", True),
        ("export NEAR/0 gallium", "gallium export", True),
        ("export NEAR/0 gallium", "gallium, and export", False),
        ('"export ban*" NEAR/3 (gallium OR germanium)', "export bans on germanium", True),
        ('"export ban*" NEAR/3 (gallium OR germanium)', "export bans on wheat. germanium", True),
        (
            '"export ban*" NEAR/3 (gallium OR germanium)',
            "export bans on wheat, rice and maize; germanium",
            False,
        ),
        ("稀土 NEAR/1 出口", "稀土，出口", True),  # a CJK run counts as one word
        ("稀土 NEAR/1 出口", "稀土，其他，商品，出口", False),
        ("稀土 NEAR/0 管制", "稀土出口管制", True),
        ("gallium NEAR/3 ban OR rice", "rice", True),  # NEAR binds tighter than OR
        ("NOT gallium NEAR/3 ban", "gallium ban", False),
        # ATLEAST
        ("ATLEAST/2 gallium", "gallium prices and gallium exports", True),
        ("ATLEAST/2 gallium", "gallium prices and germanium exports", False),
        ("ATLEAST/2 (gallium OR germanium)", "gallium prices and germanium exports", True),
        ('ATLEAST/2 "rare earth*"', "rare earths and rare-earth magnets", True),
        ("ATLEAST/2 稀土", "稀土出口与稀土价格", True),
        ("ATLEAST/3 稀土", "稀土出口与稀土价格", False),
        ("ATLEAST/1 gallium AND ban", "gallium ban", True),
        # case:
        ("case:US", "US curbs", True),
        ("case:US", "told us", False),
        ("case:BIS", "Die Frist läuft bis Montag", False),
        ("case:BIS", "The BIS added firms", True),
        ('case:"U.S."', "U.S. curbs", True),
        ('case:"Entity List"', "added to the Entity List", True),
        ('case:"Entity List"', "an entity list in your CRM", False),
        ("case:Exportación", "EXPORTACION", False),
        ("case:Exportación", "Exportacion", True),  # accents still fold
        ("case:US NOT rice", "US rice", False),
    ],
)
def test_matching(query: str, text: str, expected: bool) -> None:
    assert m(query, text) is expected


@pytest.mark.parametrize(
    ("query", "parts", "expected"),
    [
        ("title:gallium", {"title": "Gallium curbs", "text": "none"}, True),
        ("title:gallium", {"title": "Curbs", "text": "gallium"}, False),
        ("text:gallium", {"title": "Gallium curbs", "text": "none"}, False),
        ("text:gallium", {"title": "Curbs", "text": "on gallium"}, True),
        ("text:gallium", {"text": "gallium"}, True),
        ('title:"export ban"', {"title": "New export ban", "text": ""}, True),
        ("title:(gallium OR germanium) ban", {"title": "Germanium", "text": "a ban"}, True),
        ("title:(gallium NEAR/1 ban)", {"title": "gallium", "text": "ban"}, False),
        ("title:gallium NEAR/1 text:ban", {"title": "gallium", "text": "ban"}, True),
        ("text:ban NEAR/0 title:gallium", {"title": "x gallium", "text": "ban"}, True),
        ("title:稀土", {"title": "稀土出口", "text": ""}, True),
        ("title:稀土", {"title": "出口", "text": "稀土"}, False),
        ("source:mofcom*", {"source": "mofcom-zh", "text": "x"}, True),
        ("source:mofcom", {"source": "mofcom-zh", "text": "x"}, False),
        ("source:MOFCOM-ZH", {"source": "mofcom-zh", "text": "x"}, True),
        ("lang:zh", {"lang": "zh-CN", "text": "x"}, True),
        ("lang:zh", {"lang": "zh", "text": "x"}, True),
        ("lang:zh", {"lang": "zho", "text": "x"}, False),
        ("lang:en", {"lang": "", "text": "x"}, False),
        ("tag:official", {"tags": "official gov", "text": "x"}, True),
        ("tag:official", {"tags": "news", "text": "x"}, False),
        ("gallium NOT lang:zh", {"lang": "en", "text": "gallium"}, True),
        ("title:(source:x*)", {"source": "xyz", "text": ""}, True),
        ("title:(case:US)", {"title": "US bans", "text": "told us"}, True),
        ("title:(case:US)", {"title": "told us", "text": "US bans"}, False),
        ("text:(case:US)", {"title": "US bans", "text": "told us"}, False),
    ],
)
def test_fields(query: str, parts: dict[str, str], expected: bool) -> None:
    assert md(query, **parts) is expected


@pytest.mark.parametrize(
    ("query", "message", "column"),
    [
        ("(licen* OR export", "expected ')' after 'export'", 18),
        ("gallium AND", "expected a term after 'AND'", 12),
        ("gallium OR OR germanium", "expected a term, found 'OR'", 12),
        ('"rare earth', "unterminated quote", 1),
        ("()", "empty parentheses", 2),
        ("a )", "unbalanced ')'", 3),
        (")", "expected a term before ')'", 1),
        ("(a OR )", "expected a term before ')' (after 'OR')", 7),
        ("", "empty query", 1),
        ("li*ce", "'*' is only allowed at the end of a word: 'li*ce'", 1),
        ('"ban* ex*port"', "'*' is only allowed at the end of a word", 2),
        ("rare-*", "'*' must follow a letter or digit: 'rare-*'", 1),
        ('"export *"', "'*' must follow a letter or digit", 2),
        ("---", "has no letters or digits", 1),
        ("a NEAR b", "NEAR needs a number, e.g. NEAR/5", 3),
        ("a NEAR/ b", "NEAR needs a number, e.g. NEAR/5", 3),
        ("a NEAR/x b", "NEAR needs a number, e.g. NEAR/5", 3),
        ("a NEAR/5x b", "NEAR needs a number, e.g. NEAR/5", 3),
        ("a NEAR/5000 b", "NEAR/5000: the number must be between 0 and 1000", 3),
        ("ATLEAST gallium", "ATLEAST needs a number, e.g. ATLEAST/3", 1),
        ("ATLEAST/0 gallium", "ATLEAST/0: the number must be between 1 and 1000", 1),
        ("NEAR/3 b", "expected a term, found 'NEAR/3'", 1),
        ("a NEAR/3", "expected a term after 'NEAR/3'", 9),
        (
            "(a AND b) NEAR/3 c",
            "NEAR/3: each side must be a term, a phrase or an OR-group of them",
            1,
        ),
        ("a NEAR/3 NOT c", "expected a term, found 'NOT'", 10),
        ("a NEAR/3 lang:en", "NEAR/3: each side must be a term", 10),
        ("a NEAR/3 b NEAR/3 c", "NEAR/3 cannot follow another NEAR", 12),
        ("ATLEAST/2 (a AND b)", "ATLEAST/2: expected a term, a phrase or an OR-group", 11),
        ("ATLEAST/2 lang:en", "ATLEAST/2: expected a term", 11),
        ("foo:bar", "unknown field 'foo:' (fields: title:, text:, source:, lang:, tag:, case:", 1),
        ("title: gallium", "expected a term, a phrase or '(' right after 'title:'", 7),
        ("title:", "expected a term, a phrase or '(' right after 'title:'", 7),
        ("title:OR", "expected a term, a phrase or '(' right after 'title:'", 7),
        ("lang: en", "expected a value right after 'lang:'", 6),
        ("lang:(en OR zh)", "'lang:' takes one value, not a group", 6),
        ('tag:"  "', "'tag:' needs a value", 6),
        ("title:(text:x)", "'text:' inside 'title:': scopes do not nest", 8),
        ("case:(US OR EU)", "'case:' takes one word or phrase, not a group", 6),
        ("case:US*", "'case:' needs a word or phrase without '*': 'US*'", 6),
        ('case:"--"', "'case:' needs a word or phrase without '*'", 7),
        ("case: US", "expected a value right after 'case:'", 6),
        # nested past what the parser, compiler and matcher recurse on: an error, not a
        # RecursionError; 50 levels are fine (see the test below)
        ("(" * 51 + "a" + ")" * 51, "nested too deeply (more than 50 parentheses or NOTs)", 51),
        ("(" * 300 + "a" + ")" * 300, "nested too deeply", 51),
        ("NOT " * 51 + "a", "nested too deeply", 201),
    ],
)
def test_syntax_errors_name_the_column(query: str, message: str, column: int) -> None:
    with pytest.raises(QuerySyntaxError) as err:
        parse_query(query)
    assert message in err.value.message
    assert err.value.column == column


def test_fifty_levels_of_nesting_parse_and_match() -> None:
    assert m("(" * 50 + "gallium" + ")" * 50, "gallium export ban")
    assert m("NOT " * 50 + "gallium", "gallium export ban")  # an even number of NOTs


def test_named_lists_expand_in_place() -> None:
    lists = {"minerals": parse_query('gallium OR "rare earth*"')}
    node = parse_query("@minerals NEAR/3 export* NOT rice", lists=lists)
    assert node == parse_query('(gallium OR "rare earth*") NEAR/3 export* NOT rice')
    assert node.matches(Document.from_text("rare earths export ban"))
    with pytest.raises(QuerySyntaxError) as err:
        parse_query("gallium OR @metals", lists=lists)
    assert err.value.message == "unknown list '@metals' (lists known to this file: @minerals)"
    assert err.value.column == 12
    with pytest.raises(
        QuerySyntaxError, match=r"unknown list '@x' \(lists known to this file: none\)"
    ):
        parse_query("@x")


def test_print_round_trips() -> None:
    q = (
        '("rare earth*" OR 稀土) AND (licen* OR quota) AND NOT rice '
        'title:("ban* export*" NEAR/3 gallium) ATLEAST/2 (a OR b) lang:zh source:"x y" '
        'tag:gov OR "NEAR/5" OR "AND" OR "a:b" OR case:US OR case:"Entity List"'
    )
    printed = str(parse_query(q))
    assert parse_query(printed) == parse_query(q)


# ---------------------------------------------------------------- properties

_WORDS = ["gallium", "rare-earth", "licen*", "稀土", "出口管制", "MoU", "ban*", "x"]
_term = st.sampled_from(_WORDS) | st.sampled_from(
    ['"export ban*"', '"rare earth"', '"签署 MoU"', '"ban* export*"']
)
_scoped = st.builds(lambda f, t: f"{f}:{t}", st.sampled_from(["title", "text"]), _term)
_meta = st.builds(
    lambda f, v: f"{f}:{v}",
    st.sampled_from(["source", "lang", "tag"]),
    st.sampled_from(["en", "a*"]),
)
_positional = st.recursive(
    _term | _scoped,
    lambda inner: st.builds(lambda a, b: f"({a} OR {b})", inner, inner),
    max_leaves=3,
)


def _compound(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return (
        st.builds(lambda a, b: f"{a} AND {b}", inner, inner)
        | st.builds(lambda a, b: f"{a} OR {b}", inner, inner)
        | st.builds(lambda a, b: f"{a} {b}", inner, inner)
        | st.builds(lambda a: f"NOT {a}", inner)
        | st.builds(lambda a: f"({a})", inner)
    )


_leaf = (
    _positional
    | _meta
    | st.builds(lambda a, n, b: f"{a} NEAR/{n} {b}", _positional, st.integers(0, 9), _positional)
    | st.builds(lambda n, a: f"ATLEAST/{n} {a}", st.integers(1, 4), _positional)
)
queries = st.recursive(_leaf, _compound, max_leaves=12)
_text = st.lists(
    st.sampled_from(
        [
            "gallium",
            "rare",
            "earth",
            "Rare",
            "Earth",
            "licence",
            "稀土",
            "出口管制",
            "签署MoU",
            "ban",
            "export",
            "x",
            "US",
            "us",
        ]
    ),
    max_size=12,
).map(" ".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.sampled_from(list('ab* ()"/:1NEARTOLSgitlxe稀土-')), max_size=30))
def test_random_input_never_crashes_the_parser(query: str) -> None:
    error: QuerySyntaxError | None = None
    try:
        node = parse_query(query)
    except QuerySyntaxError as exc:
        error = exc
    if error is not None:
        assert 1 <= error.column <= len(query) + 1
        assert error.message
    else:
        assert parse_query(str(node)) == node


@settings(max_examples=300, deadline=None)
@given(queries, _text)
def test_generated_queries_round_trip_and_evaluate(query: str, text: str) -> None:
    node = parse_query(query)
    again = parse_query(str(node))
    assert again == node
    doc = Document.from_parts(title=text[:10], text=text[10:], source="abc", lang="en")
    assert again.matches(doc) == node.matches(doc)


# Pieces of words, joined with and without separators: words inside longer words
# ("ban" in "banned", "urban"), next to CJK, digits, underscores and accents.
_pieces = st.sampled_from(
    ["ban", "banned", "urban", "ba", "n", "_", "1", "稀土", "é", "ß", "-", " ", "\n", ".", "x"]
)
_probe = st.sampled_from(["ban", "banned", "urban", "ba", "n", "x", "1", "ban1", "é", "ss"])


@settings(max_examples=500, deadline=None)
@given(st.lists(_pieces, max_size=40).map("".join), _probe, st.booleans())
def test_word_and_prefix_tests_agree_with_the_words(text: str, probe: str, build_set: bool) -> None:
    doc = Document.from_text(text)
    if build_set:  # the set, once built, answers instead of the scan
        assert doc.word_set is not None
    assert doc.has_word(probe) == (probe in doc.words)
    assert doc.has_prefix(probe) == any(w.startswith(probe) for w in doc.words)
    for view in (doc.field("title"), doc.field("text")):
        assert view.has_word(probe) == (probe in view.words)


def test_documents_from_many_sources_leave_no_memory_behind() -> None:
    """An item's metadata is its own; nothing is kept per source (a cache of Metas by
    source held 4,096 of them, ~1 MB, and served none when more sources came in turn)."""
    docs = [Document.from_parts(text="x", source=f"src-{i}", lang="EN", tags=("Minerals",))
            for i in range(3)]  # fmt: skip
    assert [d.meta.source for d in docs] == ["src-0", "src-1", "src-2"]
    assert (docs[0].meta.lang, docs[0].meta.tags) == ("en", ("minerals",))
    assert parse_query("source:src-1 AND lang:en AND tag:minerals").matches(docs[1])
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for i in range(5000):
            Document.from_parts(text="x", source=f"other-{i}", lang="EN", tags=("Minerals",))
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 100_000
