"""Facets of a matched item: the minerals it names and the jurisdictions involved.

Countries come from pycountry (ISO 3166-1 names, common and official names,
and their Chinese, Japanese, German, French and Spanish translations shipped
with pycountry), plus demonyms and capitals that news uses for governments
("Beijing", "Chinese"). Terms match with the rule language's semantics (whole
words, accents and case folded, CJK substrings). "US" and "U.S." are matched
case-sensitively on the raw text, so the pronoun "us" is not the United States.
Results are ISO alpha-2 codes (plus "EU") and canonical mineral names. The
tables are compiled once and indexed with the rules, in the same prefilter
(watcher.engine), so one pass over an item serves both.
"""

from __future__ import annotations

import gettext
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import pycountry

from watcher.engine import Prefilter
from watcher.errors import QuerySyntaxError
from watcher.query import Document, Node, Or, Term, make_term

MINERALS: dict[str, tuple[str, ...]] = {
    "rare earths": ("rare earth*", "rare-earth*", "REE", "稀土", "レアアース", "希土類",
                    "tierras raras", "terres rares", "seltene erden", "terre rare"),
    "rare-earth magnets": ("magnet", "magnets", "NdFeB", "永磁", "磁铁", "磁石"),
    "gallium": ("gallium", "galio", "镓", "ガリウム"),
    "germanium": ("germanium", "germanio", "锗", "ゲルマニウム"),
    "graphite": ("graphite", "grafito", "石墨", "黒鉛"),
    "antimony": ("antimony", "antimonio", "antimoine", "antimon", "锑", "アンチモン"),
    "tungsten": ("tungsten", "wolfram", "tungsteno", "钨", "タングステン"),
    "lithium": ("lithium", "litio", "锂", "リチウム"),
    "cobalt": ("cobalt", "cobalto", "kobalt", "钴", "コバルト"),
    "nickel": ("nickel", "níquel", "nickel", "镍", "ニッケル"),
    "copper": ("copper", "cobre", "cuivre", "kupfer", "铜", "銅"),
    "manganese": ("manganese", "manganeso", "锰", "マンガン"),
    "indium": ("indium", "铟", "インジウム"),
    "bismuth": ("bismuth", "铋", "ビスマス"),
    "tellurium": ("tellurium", "碲", "テルル"),
    "molybdenum": ("molybdenum", "钼", "モリブデン"),
    "scandium": ("scandium", "钪", "スカンジウム"),
    "dysprosium": ("dysprosium", "镝", "ジスプロシウム"),
    "terbium": ("terbium", "铽", "テルビウム"),
    "neodymium": ("neodymium", "钕", "ネオジム"),
    "polysilicon": ("polysilicon", "多晶硅", "ポリシリコン"),
    "semiconductors": ("semiconductor*", "chip", "chips", "chipmaking", "chipmaker*",
                       "半导体", "芯片", "半導体", "semiconductores", "semi-conducteurs"),
}  # fmt: skip

EXTRA_COUNTRY_TERMS: dict[str, tuple[str, ...]] = {
    "CN": ("Beijing", "Chinese", "中国", "中华人民共和国", "中國", "商务部"),
    "US": ("United States", "America", "American", "Washington", "美国", "米国", "アメリカ",
           "Estados Unidos", "États-Unis", "Etats-Unis", "USA"),
    "JP": ("Japanese", "Tokyo", "日本"),
    "KR": ("South Korea", "Republic of Korea", "Korean", "Seoul", "韩国", "韓国"),
    "TW": ("Taiwan", "Taiwanese", "台湾", "台灣"),
    "RU": ("Russia", "Russian", "Moscow", "俄罗斯", "ロシア"),
    "GB": ("Britain", "British", "UK", "英国"),
    "DE": ("German", "Berlin", "德国", "ドイツ"),
    "FR": ("French", "法国", "フランス"),
    "IN": ("Indian", "New Delhi", "印度", "インド"),
    "ID": ("Indonesian", "Jakarta", "印度尼西亚", "印尼", "インドネシア"),
    "AU": ("Australian", "Canberra", "澳大利亚", "オーストラリア"),
    "CA": ("Canadian", "Ottawa", "加拿大", "カナダ"),
    "CD": ("Congo", "DRC", "Congolese", "Kinshasa", "刚果"),
    "CL": ("Chilean", "智利", "チリ"),
    "VN": ("Vietnam", "Vietnamese", "越南", "ベトナム"),
    "UA": ("Ukrainian", "Kyiv", "乌克兰", "ウクライナ"),
    "ZW": ("Zimbabwean",),
    "KZ": ("Kazakh", "哈萨克斯坦"),
    "EU": ("European Union", "European Commission", "Brussels", "欧盟", "欧州連合",
           "Union européenne", "Unión Europea", "Europäische Union"),
    "CG": ("Republic of the Congo", "Congo-Brazzaville"),
}  # fmt: skip

_TRANSLATIONS = ("zh_CN", "ja", "de", "fr", "es")
# Abbreviations that are also words ("us", French "eu"): matched with their case.
# Each with substrings that any match holds, so most texts skip the regex.
_CASED = (
    ("US", ("US", "U.S."), re.compile(r"\bU\.S\.(?:A\.)?|\bUS\b")),
    ("EU", ("EU",), re.compile(r"\bEU\b")),
)
_AMBIGUOUS = {"CG": {"Congo"}}  # news says "Congo" for the DRC (CD)


@dataclass(frozen=True)
class Facets:
    minerals: tuple[str, ...] = ()
    countries: tuple[str, ...] = ()


def _terms(names: list[str]) -> tuple[Term, ...]:
    out: list[Term] = []
    for name in dict.fromkeys(names):
        raw = name.replace('"', "")
        try:
            out.append(make_term(raw))
        except QuerySyntaxError:  # pragma: no cover - a name with no letters
            continue
    return tuple(out)


@dataclass(frozen=True)
class _Table:
    names: tuple[str, ...]
    nodes: tuple[Or, ...]

    @classmethod
    def build(cls, entries: dict[str, list[str]]) -> _Table:
        names, nodes = [], []
        for name, terms in entries.items():
            compiled = _terms(terms)
            if compiled:
                names.append(name)
                nodes.append(Or(compiled))
        return cls(tuple(names), tuple(nodes))


@lru_cache(maxsize=1)
def _tables() -> tuple[_Table, _Table]:
    translations = [_catalogue(lang) for lang in _TRANSLATIONS]
    countries: dict[str, list[str]] = {}
    for c in pycountry.countries:
        names = [c.name, getattr(c, "common_name", ""), getattr(c, "official_name", "")]
        names += [t.gettext(c.name) for t in translations]
        # "Korea, Republik" style inversions are not how text names a country.
        skip = _AMBIGUOUS.get(c.alpha_2, set())
        countries[c.alpha_2] = [
            n for n in names if n and "," not in n and "(" not in n and n not in skip
        ]
    for code, extra in EXTRA_COUNTRY_TERMS.items():
        countries.setdefault(code, []).extend(extra)
    minerals = {name: list(terms) for name, terms in MINERALS.items()}
    return _Table.build(minerals), _Table.build(countries)


def _catalogue(lang: str) -> gettext.NullTranslations:
    """pycountry's country names in `lang`, read for the tables alone: `gettext.translation`
    keeps every catalogue it reads for the life of the process (~0.4 MB for these)."""
    path = gettext.find("iso3166-1", pycountry.LOCALES_DIR, languages=[lang])
    if path is None:
        return gettext.NullTranslations()
    with open(path, "rb") as fp:
        return gettext.GNUTranslations(fp)


@lru_cache(maxsize=1)
def facet_nodes() -> tuple[Node, ...]:
    """The queries of every mineral, then every jurisdiction: a matcher indexes them with
    its rules, so that one pass over an item finds both (see `extract`'s `candidates`)."""
    minerals, countries = _tables()
    return minerals.nodes + countries.nodes


@lru_cache(maxsize=1)
def _prefilter() -> Prefilter:
    return Prefilter(facet_nodes())


def prepare() -> None:
    """Build the country and mineral tables now, not on the first hit (~0.1 s)."""
    _tables()


def extract(doc: Document, raw_text: str, candidates: Iterable[int] | None = None) -> Facets:
    """The minerals and jurisdictions named in a document (raw_text: for "US" and "EU").

    `candidates`: indexes into `facet_nodes()` that a prefilter found may match, in
    order; by default this module's own prefilter finds them.
    """
    minerals, countries = _tables()
    if candidates is None:
        candidates = _prefilter().candidates(doc)
    nodes = facet_nodes()
    n = len(minerals.names)
    found_minerals: list[str] = []
    found: list[str] = []
    for i in candidates:
        if nodes[i].matches(doc):
            if i < n:
                found_minerals.append(minerals.names[i])
            else:
                found.append(countries.names[i - n])
    for code, needles, pattern in _CASED:
        if (
            code not in found
            and any(needle in raw_text for needle in needles)
            and pattern.search(raw_text)
        ):
            found.append(code)
    return Facets(tuple(found_minerals), tuple(found))
