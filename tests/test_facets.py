from __future__ import annotations

import gettext

import pytest

from tests.test_evaluate import RULES
from watcher import facets
from watcher.facets import extract
from watcher.parse import make_item
from watcher.query import Document
from watcher.rules import Matcher, load_rules


@pytest.mark.parametrize(
    ("text", "minerals", "countries"),
    [
        ("Beijing bans exports of gallium and germanium to the US",
         ("gallium", "germanium"), ("CN", "US")),
        ("Let us talk about rare-earth magnets in Japan", ("rare earths", "rare-earth magnets"),
         ("JP",)),  # "us" is a pronoun
        ("商务部宣布对镓、锗相关物项实施出口管制，美国", ("gallium", "germanium"), ("CN", "US")),
        ("Indonesia and the EU sign a nickel deal; Congo extends its cobalt ban",
         ("cobalt", "nickel"), ("CD", "ID", "EU")),
        ("Il y a eu des problèmes", (), ()),  # French "eu" is not the EU
        ("La Chine restreint les exportations de terres rares vers les États-Unis",
         ("rare earths",), ("CN", "US")),
        ("日本とオーストラリアがリチウムで協力", ("lithium",), ("JP", "AU")),
        ("U.S. and Republic of Korea chip talks", ("semiconductors",), ("KR", "US")),
    ],
)  # fmt: skip
def test_extract(text: str, minerals: tuple[str, ...], countries: tuple[str, ...]) -> None:
    facets = extract(Document.from_text(text), text)
    assert facets.minerals == minerals
    assert sorted(facets.countries) == sorted(countries)


def test_hits_carry_facets() -> None:
    rules, _ = load_rules([RULES / "good.yaml"])
    item = make_item(source_id="s", title="Beijing imposes gallium export ban", text="on the U.S.")
    [hit] = Matcher(rules).match(item)
    assert hit.minerals == ("gallium",)
    assert sorted(hit.countries) == ["CN", "US"]


def test_country_name_catalogues_are_not_kept_after_the_tables_are_built() -> None:
    """`gettext.translation` keeps what it reads for ever (~0.4 MB of country names)."""
    facets._tables.cache_clear()
    _, countries = facets._tables()
    assert "DE" in countries.names
    assert extract(Document.from_parts(text="Deutschland und Frankreich"), "").countries == (
        "DE",
        "FR",
    )
    assert not [path for _, path in gettext._translations if "iso3166" in path]  # type: ignore[attr-defined]
