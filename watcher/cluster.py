"""Story clustering: what a rewrite keeps, weighted by how rare it is in the stream.

Republished stories are rewritten, not copied: word shingles barely overlap.
What survives a rewrite is the named people, organisations, places and
programmes, the numbers and amounts, the dates, the distinctive terms and the
event. `features()` turns an item into those keys (boilerplate lines such as
comments, share buttons and author bios are dropped first); `weigh()` turns
key counts into a unit-length TF-IDF vector using document frequencies learned
from the stream itself (smoothed by a prior, so an empty store weighs every
key alike); `similarity()` is the cosine of two such vectors.

Merging needs a cosine of at least the threshold and at least two shared
names, amounts or dates (vocabulary alone never merges). Vetoes keep
look-alikes apart even when their vocabulary is close: a different event
polarity in the headline (a curb and its later easing), disjoint headline
amounts ("adds 140 entities" and "adds 80 entities"), and bilateral headlines
with different partners ("US and Japan" and "US and Australia").
Chosen and measured with bench/cluster_quality.py.

The store-backed candidate index lives in `watcher.story_store`; this module
is pure and has no I/O.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from watcher import constants
from watcher.federal_register import document_identity
from watcher.models import Item
from watcher.text import normalize

# Key prefixes: e: entity, o: ordinary name (a country, an agency), n: number or amount,
# d: date, t: term, h: headline term. Only e, n and d are specifics (see shared_specifics).
_KEY_MAX_CHARS = 120  # the store's key columns hold 160
_BOOST = {"e": 2.0, "o": 2.0, "n": 2.0, "d": 2.0, "t": 1.0, "h": 1.0}

_STOPWORDS = frozenset(
    """
    a about above after again against all also am an and any are as at be because been
    before being below between both but by can could did do does doing down during each few
    for from further had has have having he her here hers herself him himself his how i if
    in into is it its itself just me more most my myself no nor not now of off on once only
    or other our ours ourselves out over own same she should so some such than that the
    their theirs them themselves then there these they this those through to too under until
    up very was we were what when where which while who whom why will with would you your
    yours yourself yourselves said says say told according new one two three also would
    could may might must shall like get got make made many much well year years week weeks
    month months day days time times today yesterday tomorrow however including include
    includes included via per mr ms dr it's that's monday tuesday wednesday thursday friday
    saturday sunday
    """.split()  # noqa: SIM905
)

_MONTHS = {
    "jan": 1, "january": 1, "feb": 2, "february": 2, "mar": 3, "march": 3, "apr": 4,
    "april": 4, "may": 5, "jun": 6, "june": 6, "jul": 7, "july": 7, "aug": 8, "august": 8,
    "sep": 9, "sept": 9, "september": 9, "oct": 10, "october": 10, "nov": 11,
    "november": 11, "dec": 12, "december": 12,
}  # fmt: skip

# Headline countries: names, demonyms and capitals fold to one code.
_COUNTRIES = {
    "us": "us", "u.s": "us", "usa": "us", "america": "us", "american": "us",
    "washington": "us", "united states": "us", "white house": "us",
    "china": "cn", "chinese": "cn", "beijing": "cn", "prc": "cn",
    "japan": "jp", "japanese": "jp", "tokyo": "jp",
    "eu": "eu", "european union": "eu", "brussels": "eu", "european commission": "eu",
    "uk": "gb", "britain": "gb", "british": "gb", "london": "gb", "united kingdom": "gb",
    "india": "in", "indian": "in", "new delhi": "in", "delhi": "in",
    "russia": "ru", "russian": "ru", "moscow": "ru", "kremlin": "ru",
    "indonesia": "id", "indonesian": "id", "jakarta": "id",
    "australia": "au", "australian": "au", "canberra": "au",
    "canada": "ca", "canadian": "ca", "ottawa": "ca",
    "mexico": "mx", "mexican": "mx",
    "korea": "kr", "south korea": "kr", "korean": "kr", "seoul": "kr",
    "taiwan": "tw", "taiwanese": "tw", "taipei": "tw",
    "vietnam": "vn", "vietnamese": "vn", "hanoi": "vn",
    "drc": "cd", "congo": "cd", "congolese": "cd", "kinshasa": "cd",
    "zambia": "zm", "zambian": "zm", "lusaka": "zm",
    "chile": "cl", "chilean": "cl", "santiago": "cl",
    "argentina": "ar", "argentine": "ar", "bolivia": "bo", "bolivian": "bo",
    "brazil": "br", "brazilian": "br", "peru": "pe", "peruvian": "pe",
    "germany": "de", "german": "de", "berlin": "de", "france": "fr", "french": "fr",
    "paris": "fr", "netherlands": "nl", "dutch": "nl", "the hague": "nl",
    "malaysia": "my", "malaysian": "my", "philippines": "ph", "philippine": "ph",
    "myanmar": "mm", "burma": "mm", "kazakhstan": "kz", "tajikistan": "tj",
    "zimbabwe": "zw", "zimbabwean": "zw", "namibia": "na", "guinea": "gn",
    "south africa": "za", "saudi": "sa", "saudi arabia": "sa", "ukraine": "ua",
    "ukrainian": "ua", "kyiv": "ua", "turkey": "tr", "turkish": "tr",
}  # fmt: skip

# Names nearly every item of this domain carries: the agencies, their lists, regulations
# and publications, the wires. Weighed like names, but not specifics: two Entity List
# rules by the Bureau of Industry and Security share these and nothing else.
# (Keys as `_name_key` writes them: words of the name, stopwords out, joined by "_".)
_ORDINARY_NAMES = frozenset(
    """
    entity_list unverified_list military_end_user_list federal_register bis ear ofac mofcom
    ustr miit ndrc gacc bureau_industry bureau_industry_security security industry bureau
    commerce commerce_department department_commerce ministry_commerce commerce_ministry
    department ministry government administration agency office commission council
    export_administration_regulation export_administration_regulations export_administration
    regulation regulations rule final_rule interim_final_rule notice federal treasury
    treasury_department department_treasury state_department department_state
    office_foreign_assets_control foreign_assets_control customs general_administration_customs
    state_council congress senate parliament cabinet ministry_foreign_affairs
    foreign_ministry ministry_industry_information_technology national_security
    reuters bloomberg xinhua afp associated_press
    """.split()  # noqa: SIM905
)
# Words a name can start with that are no part of it: "US Commerce Department", "Chinese
# Ministry of Commerce", "President Donald Trump" are the department, ministry and person.
_NAME_PREFIXES = frozenset(
    """
    president vice secretary minister prime premier chancellor chairman chair ceo spokesman
    spokeswoman spokesperson sen senator rep gov governor gen general deputy acting former
    foreign trade
    """.split()  # noqa: SIM905
)

# Headline polarity: the event a story is about, as far as the headline says.
_EASING = re.compile(
    r"\b(eas(e|es|ed|ing)|lift(s|ed|ing)?|relax(es|ed|ing)?|loosen(s|ed|ing)?|"
    r"suspend(s|ed|ing)?|suspension|resum(e|es|ed|ing)|exempt(s|ed|ion|ions)?|"
    r"waiv(e|es|ed|er|ers)|scrap(s|ped)?|revok(e|es|ed)|lift-off|pause(s|d)?|"
    r"delay(s|ed)?|approv(e|es|ed|al)s? (export|shipment)|remov(e|es|ed|al) from)\b"
)
_RESTRICTION = re.compile(
    r"\b(curb(s|ed|ing)?|ban(s|ned|ning)?|restrict(s|ed|ing|ion|ions)?|"
    r"tighten(s|ed|ing)?|halt(s|ed|ing)?|block(s|ed|ing)?|impos(e|es|ed|ing)|"
    r"control(s|led)?|licen[cs](e|es|ing) (requirement|rule)s?|adds?|added|blacklist(s|ed)?)\b"
)

_BOILERPLATE = re.compile(
    r"^\W*(comments?\b|\d+\s+comments?|leave a (comment|reply)|sign in|log in|share\b|"
    r"you may also like|related (articles?|stories|posts)|read more|read next|subscribe|"
    r"sign up|newsletter|follow us|©|\(c\)|copyright|all rights reserved|terms of (service|use)|"
    r"privacy policy|cookie|loading comments|advertisement|sponsored|posted (by|in|on)|"
    r"by [\w .'-]{1,40}$|\d+\s*min(ute)?s? read|your email address|required fields|"
    r"pro tip|did you (know|recognize)|want to learn more|explore our|source reference|"
    r"tags?:|categor(y|ies):|image:|layout:|author:|date:|excerpt:|photo:|getty images|"
    r"click here|tweet|whatsapp|facebook|linkedin|email this|print this|save article)",
    re.IGNORECASE,
)
_BIO = re.compile(
    r"\b(has (covered|written|reported)|is an? ([\w-]+ ){0,3}(reporter|editor|journalist|"
    r"correspondent|writer|analyst at)|turned journalist|(his|her|their) work has)\b",
    re.IGNORECASE,
)
_FRONT_MATTER = re.compile(r"\A\s*---\n.*?\n---\s*\n", re.DOTALL)
_FRONT_TITLE = re.compile(r"^title:\s*[\"']?(.*?)[\"']?\s*$", re.MULTILINE)

_WORD = re.compile(r"[^\W\d_][\w'’-]*|\d[\d,.]*", re.UNICODE)
_CAPITAL = re.compile(r"\b(?:[A-Z][\w’'-]*\.?)(?:\s+(?:of\s+|the\s+)?[A-Z][\w’'-]*)*")
_AMOUNT = re.compile(
    r"(?<![\w.])\$?(\d[\d,]*(?:\.\d+)?)\s*(%|percent|per cent|trillion|billion|million|bn|"
    r"mn|tonnes|tons|metric tons|kilograms|kg)?(?![\w])",
    re.IGNORECASE,
)
# Month names as a trie (jan(?:uary)?...): the same matches as "jan|january|...", since at
# most one name fits where a match can end, but far fewer attempts per position; the
# lookahead skips every position that cannot start a date.
_MONTH_NAMES = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_DATE = re.compile(
    r"\b(?=[\djfmasond])(?:(\d{1,2})(?:st|nd|rd|th)?\s+(" + _MONTH_NAMES + r")\b|("
    + _MONTH_NAMES + r")\.?\s+(\d{1,2})(?:st|nd|rd|th)?\b)",
    re.IGNORECASE,
)  # fmt: skip
_DOCUMENT = "fr:"  # a Federal Register document's number, among the headline amounts
_SENTENCE_START = re.compile(r"(^|[.!?:\"“”]\s+|\n)$")


@dataclass(frozen=True, slots=True)
class Features:
    """What an item says, as keys with counts, plus the headline cues used as vetoes."""

    counts: Mapping[str, int]
    polarity: str  # "easing", "restriction" or ""
    countries: frozenset[str]
    # numbers in the headline, years left out; and "fr:<number>" for an item that is a
    # Federal Register document (stored with the amounts, so a member's cues keep it)
    amounts: frozenset[str] = frozenset()


def clean_text(text: str) -> str:
    """The item's text without boilerplate lines (comments, share buttons, bios, footers)."""
    text = _FRONT_MATTER.sub("", text)
    kept = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or _BOILERPLATE.match(stripped) or _BIO.search(stripped):
            continue
        if len(stripped.split()) < 3 and not any(c.isdigit() for c in stripped):
            continue  # headings and UI fragments: "Introduction", "Share This Article"
        kept.append(stripped)
    return "\n".join(kept)


def headline(item: Item) -> str:
    """The title, else the front-matter title, else the first line of the text."""
    if item.title.strip():
        return item.title
    m = _FRONT_TITLE.search(item.text[:2000])
    if m and item.text.lstrip().startswith("---"):
        return m.group(1)
    for line in clean_text(item.text[:3000]).splitlines():
        return line[:300]
    return ""


def _stem(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


_COUNTRY_RE = re.compile(
    r"(?<![\w.])("
    + "|".join(re.escape(n) for n in sorted(_COUNTRIES, key=len, reverse=True))
    + r")(?:'s)?(?!\w)"
)


def _countries(text: str) -> frozenset[str]:
    norm = normalize(text).replace("’", "'")
    return frozenset(_COUNTRIES[m.group(1)] for m in _COUNTRY_RE.finditer(norm))


def _polarity(text: str) -> str:
    norm = normalize(text)
    if _EASING.search(norm):
        return "easing"
    if _RESTRICTION.search(norm):
        return "restriction"
    return ""


def _amount_key(number: str, unit: str | None) -> str | None:
    digits = number.replace(",", "")
    try:
        value = float(digits)
    except ValueError:
        return None
    unit = (unit or "").lower()
    unit = {"percent": "%", "per cent": "%", "bn": "billion", "mn": "million"}.get(unit, unit)
    unit = {"tons": "tonnes", "metric tons": "tonnes", "kilograms": "kg"}.get(unit, unit)
    if not unit and value < 10 and value == int(value):
        return None  # "3 min read", list numbers: too common to say anything
    text = f"{value:g}"
    return f"n:{text}{unit}"


def _title_case(line: str) -> bool:
    split = line.split()
    if len(split) < 3:
        return False
    words = [w for w in split if w[:1].isalpha() and w.lower() not in _STOPWORDS]
    return len(words) >= 3 and sum(w[0].isupper() for w in words) >= 0.75 * len(words)


def _without_title_case_lines(text: str) -> str:
    """Title Case headlines and headings say nothing about names: blank them for entities."""
    return "\n".join("" if _title_case(line) else line for line in text.split("\n"))


def features(item: Item) -> Features:
    """Keys a rewrite keeps, counted, from the headline and the boilerplate-free text."""
    head = headline(item)
    body = clean_text(item.text[: constants.CLUSTER_TEXT_MAX_CHARS])
    counts: Counter[str] = Counter()
    for part, weight in ((head, 2), (body, 1)):
        names: Counter[str] = Counter()
        for m in _CAPITAL.finditer(_without_title_case_lines(part)):
            start = m.start()
            words = m.group(0).split()
            if len(words) == 1 and (
                start == 0 or _SENTENCE_START.search(part[max(0, start - 3) : start])
            ):
                continue  # a sentence-initial capital counts only inside a longer name
            key = _name_key(tuple(words))
            if key:
                names[key] += 1
        for key, n in names.items():
            counts[key] += weight * n
        for m in _AMOUNT.finditer(part):
            key = _amount_key(m.group(1), m.group(2))
            if key:
                counts[key] += weight
        for m in _DATE.finditer(part):
            day, month = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
            counts[f"d:{_MONTHS[month.lower()]}-{int(day)}"] += weight
        prefix = "h:" if weight == 2 else "t:"
        for word, n in Counter(_WORD.findall(normalize(part).replace("’", "'"))).items():
            key = _term_key(word)
            if key:
                counts[prefix + key] += n
    return Features(
        counts={k: c for k, c in counts.items() if len(k) <= _KEY_MAX_CHARS},
        polarity=_polarity(head),
        countries=_countries(head),
        amounts=_headline_amounts(head) | _document(item),
    )


def is_document(f: Features) -> bool:
    """Whether the item is a Federal Register document (see federal_register.document_identity):
    its story is the document's whenever its items come."""
    return any(x.startswith(_DOCUMENT) for x in f.amounts)


def _document(item: Item) -> frozenset[str]:
    number = document_identity(item)
    return frozenset((_DOCUMENT + number,)) if number else frozenset()


@functools.lru_cache(maxsize=constants.CLUSTER_WORD_CACHE_ENTRIES)
def _entity_key(word: str) -> str | None:
    """The key of one word of a name ("e:vance"), or None for stopwords, digits, initials."""
    w = normalize(word).strip(".'’")
    w = w.removesuffix("'s").removesuffix("’s")
    if len(w) > 1 and w not in _STOPWORDS and not w.isdigit():
        return "e:" + w
    return None


def _name_key(words: tuple[str, ...]) -> str | None:
    """One key for a whole name ("e:bureau_industry_security"), or None.

    A name of several words is one name, not one per word: "Entity List" shares nothing
    with "List of Chemicals". Leading countries and titles are left out ("Chinese Ministry
    of Commerce" is the ministry); countries and `_ORDINARY_NAMES` are "o:" keys.
    """
    parts = [k[2:] for k in map(_entity_key, words) if k]
    while len(parts) > 1 and (parts[0] in _COUNTRIES or parts[0] in _NAME_PREFIXES):
        parts.pop(0)
    if not parts:
        return None
    name = "_".join(parts)
    if name in _ORDINARY_NAMES or " ".join(parts) in _COUNTRIES:
        return "o:" + name
    return "e:" + name


@functools.lru_cache(maxsize=constants.CLUSTER_WORD_CACHE_ENTRIES)
def _term_key(word: str) -> str | None:
    """A normalised word's stem, or None for short words, stopwords and numbers."""
    w = word.strip("'-").removesuffix("'s").removesuffix("'")
    if len(w) < 3 or w in _STOPWORDS or w[0].isdigit():
        return None
    return _stem(w)


def _headline_amounts(head: str) -> frozenset[str]:
    out = set()
    for m in _AMOUNT.finditer(head):
        key = _amount_key(m.group(1), m.group(2))
        if key and not re.fullmatch(r"n:(19|20)\d\d", key):
            out.add(key)
    return frozenset(out)


def idf(df: int, docs: int) -> float:
    """Smoothed inverse document frequency; a prior of unseen documents keeps small streams sane."""
    prior = constants.CLUSTER_IDF_PRIOR_DOCS
    return math.log((docs + prior) / (df + 1.0))


def weigh(counts: Mapping[str, int], df: Mapping[str, int], docs: int) -> dict[str, float]:
    """Unit-length TF-IDF vector (sublinear tf, boosted key kinds), cut to its top keys."""
    log, total, boost = math.log, docs + constants.CLUSTER_IDF_PRIOR_DOCS, _BOOST
    # (-weight, key): sorting these puts the heaviest first, ties by key (as `idf` would).
    ranked = sorted(
        (-((1.0 + log(c)) * log(total / (df.get(k, 0) + 1.0)) * boost[k[0]]), k)
        for k, c in counts.items()
        if c > 0
    )[: constants.CLUSTER_VECTOR_KEYS]
    norm = math.sqrt(sum(v * v for v, _ in ranked)) or 1.0
    return {k: round(-v / norm, 6) for v, k in ranked}


def similarity(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """Cosine of two unit-length vectors: a sum over the keys they share."""
    return sum(a[k] * b[k] for k in a.keys() & b.keys())


def shared_specifics(a: Mapping[str, float], b: Mapping[str, float]) -> int:
    """How many names, amounts and dates two vectors share: vocabulary alone never merges."""
    if len(a) > len(b):
        a, b = b, a
    return sum(1 for k in a if k[0] in "end" and k in b)


def vetoed(a: Features, b: Features) -> bool:
    """True when the headlines say these are different events, however alike the texts.

    Different Federal Register documents (numbers are never reused), different polarity
    (a curb and its easing), disjoint headline amounts, or bilateral headlines with
    different partners.
    """
    if a.polarity and b.polarity and a.polarity != b.polarity:
        return True
    if a.amounts and b.amounts:
        docs_a = {x for x in a.amounts if x.startswith(_DOCUMENT)}
        docs_b = {x for x in b.amounts if x.startswith(_DOCUMENT)}
        if docs_a and docs_b and not docs_a & docs_b:
            return True  # two documents, however alike their boilerplate
        amounts_a, amounts_b = a.amounts - docs_a, b.amounts - docs_b
        if amounts_a and amounts_b and not amounts_a & amounts_b:
            return True  # "adds 140 entities" is not "adds 80 entities"
    # A bilateral deal with a different partner: "US and Japan" is not "US and Australia".
    return (
        len(a.countries) >= 2
        and len(b.countries) >= 2
        and bool(a.countries - b.countries)
        and bool(b.countries - a.countries)
    )


def index_keys(vector: Mapping[str, float], n: int) -> list[str]:
    """The item's most distinctive keys: what the candidate index stores and looks up."""
    return [k for k, _ in sorted(vector.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]
