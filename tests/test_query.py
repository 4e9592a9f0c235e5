from __future__ import annotations

import pytest

from watcher.errors import QuerySyntaxError
from watcher.query import Document, parse_query


def m(query: str, text: str) -> bool:
    return parse_query(query).matches(Document.from_text(text))


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
        ("Exportación", "nueva exportacion de litio", True),
        ("稀土", "商务部公告稀土出口管制", True),
        ("輸出管理", "半導体の輸出管理を強化", True),
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
    ],
)
def test_matching(query: str, text: str, expected: bool) -> None:
    assert m(query, text) is expected


@pytest.mark.parametrize(
    ("query", "message", "column"),
    [
        ("(licen* OR export", "expected ')' after 'export'", 18),
        ("gallium AND", "expected a term after 'AND'", 12),
        ("gallium OR OR germanium", "expected a term, found 'OR'", 12),
        ('"rare earth', "unterminated quote", 1),
        ("()", "empty parentheses", 2),
        ("a )", "unbalanced ')'", 3),
        ("", "empty query", 1),
        ("li*ce", "'*' is only allowed at the end of a term", 1),
        ("---", "has no letters or digits", 1),
    ],
)
def test_syntax_errors_name_the_column(query: str, message: str, column: int) -> None:
    with pytest.raises(QuerySyntaxError) as err:
        parse_query(query)
    assert message in err.value.message
    assert err.value.column == column


def test_print_round_trips() -> None:
    q = '("rare earth*" OR 稀土) AND (licen* OR quota) AND NOT rice'
    printed = str(parse_query(q))
    assert parse_query(printed) == parse_query(q)
