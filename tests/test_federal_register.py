"""The Federal Register API adapter and Public Inspection: one story per document number."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import FakeClock
from tests.pipelines import loopback_pipeline
from tests.servers import FeedServer, Route
from tests.test_corpus import CORPUS
from watcher.fastparse import fast_parse
from watcher.federal_register import (
    document_identity,
    document_number,
    documents_url,
    is_federal_register,
    story_hash,
)
from watcher.inputs import read_items
from watcher.parse import content_hash, make_item, parse_document, parse_feed
from watcher.rules import Matcher, load_rules
from watcher.store import Store

RULES = Path(__file__).parent / "testdata" / "rules" / "ree.yaml"
REAL = CORPUS / "real-feeds"


def test_documents_url_has_agency_and_term_conditions() -> None:
    url = documents_url(["industry-and-security-bureau"], "rare earth")
    assert url.startswith("https://www.federalregister.gov/api/v1/documents.json?")
    assert "conditions%5Bagencies%5D%5B%5D=industry-and-security-bureau" in url
    assert "conditions%5Bterm%5D=rare+earth" in url


@pytest.mark.parametrize(
    ("name", "count", "first"),
    [
        ("us-federal-register_api-documents_bis-semiconductor_trimmed.json", 3, "2026-00789"),
        ("us-federal-register_api-documents_state-department_gifts-search.json", 20, "2024-31509"),
        ("us-federal-register_api-document_2025-14789_single.json", 1, "2025-14789"),
    ],
)
def test_real_api_answers_become_items(name: str, count: int, first: str) -> None:
    path = REAL / name
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    items = parse_feed(path.read_bytes(), source_id="fr", tags=["us"])
    assert len(items) == count
    item = items[0]
    assert item.guid == f"fr-doc:{first}" and item.dedup_key == f"guid:fr-doc:{first}"
    assert item.url.startswith("https://www.federalregister.gov/documents/")
    assert item.title and item.published is not None and item.language == "en"
    assert "Agencies: " in item.text and item.tags == ("us",)
    assert item.content_hash == story_hash(first)


def test_json_that_is_neither_is_still_not_a_feed() -> None:
    assert not is_federal_register({"results": [{"id": 1}]})
    assert not is_federal_register({"errors": ["bad request"]})


def pi_doc(number: str, title: str) -> dict[str, object]:
    return {
        "document_number": number,
        "title": title,
        "type": "Rule",
        "agencies": [{"name": "Industry and Security Bureau"}],
        "filed_at": "2026-02-04T08:45:00.000-05:00",
        "publication_date": "2026-02-05",
        "html_url": f"https://www.federalregister.gov/public-inspection/2026/02/05/{number}/x",
    }


def published_doc(number: str, title: str) -> dict[str, object]:
    return {
        "document_number": number,
        "title": title,
        "type": "Rule",
        "abstract": "BIS amends the EAR to add export controls on rare earth magnets.",
        "agencies": [{"name": "Industry and Security Bureau"}],
        "publication_date": "2026-02-05",
        "html_url": f"https://www.federalregister.gov/documents/2026/02/05/{number}/x",
    }


def ree_rules() -> Matcher:
    rules, errors = load_rules([RULES])
    assert errors == []
    return Matcher(rules)


async def test_public_inspection_alerts_and_publication_joins_the_story(
    store: Store, clock: FakeClock, session: aiohttp.ClientSession, feed_server: FeedServer
) -> None:
    title = "Export Controls on Rare Earth Magnets and Related Items"
    feed_server.routes["/pi.json"] = Route(
        body=json.dumps({"results": [pi_doc("2026-02222", title)]}).encode(),
        content_type="application/json",
    )
    feed_server.routes["/docs.json"] = Route(
        body=json.dumps({"count": 0, "results": []}).encode(), content_type="application/json"
    )
    config, pipeline = await loopback_pipeline(
        store, session, clock,
        [{"id": "fr-pi", "url": feed_server.url("/pi.json")},
         {"id": "fr-bis", "url": feed_server.url("/docs.json")}],
        matcher=ree_rules(),
    )  # fmt: skip
    pi, docs = config.sources
    filed = await pipeline.poll(pi)
    assert filed.new_items == 1 and [a.hit.rule_id for a in filed.alerts] == ["ree-export-curb"]
    assert "public-inspection" in filed.alerts[0].item.tags
    assert (await pipeline.poll(docs)).new_items == 0
    # a business day later the document is published: same number, new source, no new alert
    clock.advance(86_400)
    feed_server.routes["/docs.json"] = Route(
        body=json.dumps({"count": 1, "results": [published_doc("2026-02222", title)]}).encode(),
        content_type="application/json",
    )
    published = await pipeline.poll(docs)
    assert published.new_items == 1 and published.alerts == []
    assert len(await store.list_alerts()) == 1
    assert await store.count_items() == 2  # both kept, one story...
    [grown] = published.stories_grown  # ...which now has both sources
    assert (grown.item_count, grown.source_count, grown.new_story) == (2, 2, False)


def test_fields_of_the_wrong_type_are_ignored_and_the_document_still_read() -> None:
    answer = {
        "count": 2,
        "results": [
            {"document_number": "2026-00001", "title": "Rare earth magnets", "agencies": 5},
            {
                "document_number": 2026,  # a number, not a string: still its number
                "title": {"x": 1},
                "agencies": "abc",
                "type": ["Rule"],
                "abstract": 7.5,
                "filed_at": 5,
                "publication_date": ["2026-02-05"],
                "html_url": 7,
            },
        ],
    }
    first, second = parse_feed(json.dumps(answer).encode(), source_id="fr", tags=["us"])
    assert (first.guid, first.title, first.text) == ("fr-doc:2026-00001", "Rare earth magnets", "")
    assert first.content_hash == story_hash("2026-00001")
    assert (second.guid, second.title, second.url) == ("fr-doc:2026", "", "")
    assert second.published is None
    assert second.tags == ("us", "public-inspection")  # filed_at names a filing, whatever its type


def test_a_search_with_no_match_is_zero_items() -> None:
    # what documents.json answers for a term nothing matches: no `results` at all
    empty = {"count": 0, "description": 'Documents matching "critical minerals"', "total_pages": 0}
    assert parse_feed(json.dumps(empty).encode(), source_id="fr") == []
    assert parse_feed(b'{"count": 0, "results": []}', source_id="fr") == []


def test_an_entry_that_is_not_a_document_is_skipped_not_the_answer() -> None:
    answer = {"count": 3, "results": [published_doc("2026-00009", "A rule"), "junk", None]}
    [item] = parse_feed(json.dumps(answer).encode(), source_id="fr")
    assert item.guid == "fr-doc:2026-00009"


def test_a_filing_is_tagged_public_inspection_once() -> None:
    answer = json.dumps({"results": [pi_doc("2026-02222", "A rule")]}).encode()
    tags = ["us", "government", "public-inspection"]  # the catalogue's fr-public-inspection
    [item] = parse_feed(answer, source_id="fr-public-inspection", tags=tags)
    assert item.tags == ("us", "government", "public-inspection")
    [item] = parse_feed(answer, source_id="fr", tags=["us"])
    assert item.tags == ("us", "public-inspection")


def test_document_urls_name_their_number() -> None:
    long = "https://www.federalregister.gov/documents/2026/02/05/2026-02222/export-controls"
    assert document_number(long) == "2026-02222"
    assert document_number("https://www.federalregister.gov/d/2026-02222") == "2026-02222"
    assert document_number("https://www.federalregister.gov/documents/search?x=1") is None
    assert document_number("https://www.federalregister.gov/public-inspection/current") is None
    assert document_number("https://example.org/documents/2026/02/05/2026-02222/x") is None


@pytest.mark.parametrize(
    ("content_type", "fast"),
    [("application/rss+xml", True), ("application/rss+xml; charset=iso-8859-1", False)],
)
def test_documents_rss_items_have_the_document_identity(content_type: str, fast: bool) -> None:
    """documents.rss (the catalogue's fr-bis, fr-ustr, fr-state), read by either parser."""
    rss = REAL / "us-federal-register_documents-all-agencies_2025-08-04.rss"
    single = REAL / "us-federal-register_api-document_2025-14789_single.json"
    if not rss.is_file() or not single.is_file():
        pytest.skip(f"{REAL} is absent: the shared feed corpus is needed for this test")
    body = rss.read_bytes()
    options = {"source_id": "fr-bis", "content_type": content_type}
    # an HTTP charset that contradicts the document's own sends it to feedparser
    assert (fast_parse(body, base_url="", language="", tags=(), **options) is not None) is fast
    items = parse_document(body, **options).items
    assert len(items) == 200
    for item in items:
        number = document_number(item.url)
        assert number and item.content_hash == story_hash(number), item.url
        assert item.guid == item.url and item.dedup_key == f"guid:{item.url}"  # the feed's own
    # the API's answer for the same document gives the same story key
    [api] = parse_feed(single.read_bytes(), source_id="fr-bis-json")
    [rss_item] = [i for i in items if document_number(i.url) == "2025-14789"]
    assert rss_item.content_hash == api.content_hash


def test_other_links_keep_their_content_hash() -> None:
    atom = (
        b'<feed xmlns="http://www.w3.org/2005/Atom"><title>t</title>'
        b"<entry><id>urn:1</id><title>Short link</title>"
        b'<link href="https://www.federalregister.gov/d/2026-02222"/></entry>'
        b"<entry><id>urn:2</id><title>Elsewhere</title>"
        b'<link href="https://example.org/documents/2026/02/05/2026-02222/x"/></entry></feed>'
    )
    short, elsewhere = parse_feed(atom, source_id="s", content_type="application/atom+xml")
    assert short.content_hash == story_hash("2026-02222")
    assert elsewhere.content_hash == content_hash("Elsewhere", "")


def documents_rss(number: str, title: str) -> bytes:
    url = f"https://www.federalregister.gov/documents/2026/02/05/{number}/export-controls"
    abstract = published_doc(number, title)["abstract"]
    return (
        '<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel>'
        "<title>Federal Register: Industry and Security Bureau</title>"
        "<link>https://www.federalregister.gov/api/v1/documents.rss</link><description>d</description>"
        f"<item><title>{title}</title><link>{url}</link><description>{abstract}</description>"
        f"<pubDate>Thu, 05 Feb 2026 05:00:00 GMT</pubDate><guid>{url}</guid></item>"
        "</channel></rss>"
    ).encode()


@pytest.mark.parametrize(
    "spelling", ["C1-2026-02222", "c1-2026-02222", " C1-2026-02222\u00a0", "FR Doc. C1-2026-02222"]
)
def test_a_document_number_is_one_identity_however_it_is_spelled(spelling: str) -> None:
    answer = {"count": 1, "results": [{"document_number": spelling, "title": "A correction"}]}
    [api] = parse_feed(json.dumps(answer).encode(), source_id="fr")
    assert api.guid == "fr-doc:C1-2026-02222" and api.dedup_key == "guid:fr-doc:C1-2026-02222"
    assert api.content_hash == story_hash("C1-2026-02222") == story_hash(spelling)
    # a feed linking the document's page with the number in lower case: the same story
    link = "https://www.federalregister.gov/d/c1-2026-02222"
    assert document_number(link) == "C1-2026-02222"
    rss = (
        '<rss version="2.0"><channel><title>t</title><link>https://x.example/</link>'
        f"<item><title>Another title</title><link>{link}</link><guid>{link}</guid></item>"
        "</channel></rss>"
    ).encode()
    [entry] = parse_feed(rss, source_id="news", content_type="application/rss+xml")
    assert entry.content_hash == api.content_hash
    assert entry.guid == link  # the feed's own identity stays as the feed wrote it


def json_feed(number: str, title: str) -> bytes:
    url = f"https://www.federalregister.gov/documents/2026/02/05/{number}/export-controls"
    entry = {
        "id": url,
        "url": url,
        "title": title,
        "content_text": published_doc(number, title)["abstract"],
        "date_published": "2026-02-05T05:00:00Z",
    }
    feed = {"version": "https://jsonfeed.org/version/1.1", "title": "FR BIS", "items": [entry]}
    return json.dumps(feed).encode()


@pytest.mark.parametrize("published_in", ["documents.rss", "json-feed"])
async def test_a_filing_then_its_document_in_a_feed_alert_once(
    store: Store,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    published_in: str,
) -> None:
    """Published a business day after its filing, in the agency's documents.rss or in a
    JSON Feed that links the document's page: it joins the filing's story, no alert."""
    title = "Export Controls on Rare Earth Magnets and Related Items"
    feed_server.routes["/pi.json"] = Route(
        body=json.dumps({"results": [pi_doc("2026-02222", title)]}).encode(),
        content_type="application/json",
    )
    feed_server.routes["/bis"] = (
        Route(body=documents_rss("2026-02222", title))
        if published_in == "documents.rss"
        else Route(
            body=json_feed("2026-02222", "Revisions to the EAR: rare earth magnet export controls"),
            content_type="application/feed+json",
        )
    )
    config, pipeline = await loopback_pipeline(
        store, session, clock,
        [{"id": "fr-public-inspection", "url": feed_server.url("/pi.json")},
         {"id": "fr-bis", "url": feed_server.url("/bis")}],
        matcher=ree_rules(),
    )  # fmt: skip
    pi, feed = config.sources
    filed = await pipeline.poll(pi)
    assert [a.hit.rule_id for a in filed.alerts] == ["ree-export-curb"]
    clock.advance(86_400)
    published = await pipeline.poll(feed)
    assert published.new_items == 1 and published.alerts == []
    [grown] = published.stories_grown
    assert (grown.item_count, grown.source_count, grown.new_story) == (2, 2, False)
    [alert] = await store.list_alerts()
    assert alert.id == filed.alerts[0].alert_id


def test_json_lines_entries_linking_a_document_take_its_identity(tmp_path: Path) -> None:
    url = "https://www.federalregister.gov/documents/2026/02/05/2026-02222/export-controls"
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps({"id": "a", "url": url, "title": "A rule"}) + "\n")
    [(ident, item)] = read_items(path)
    assert ident == "a" and item.content_hash == story_hash("2026-02222")


def test_a_date_alone_is_midnight_in_washington() -> None:
    winter = published_doc("2026-02222", "A rule")  # publication_date 2026-02-05: EST
    summer = {**published_doc("2025-14789", "B rule"), "publication_date": "2025-08-04"}  # EDT
    filed = pi_doc("2026-02223", "C rule")  # filed_at has its offset: kept as it is
    answer = json.dumps({"count": 3, "results": [winter, summer, filed]}).encode()
    a, b, c = parse_feed(answer, source_id="fr")
    assert a.published is not None and a.published.isoformat() == "2026-02-05T05:00:00+00:00"
    assert b.published is not None and b.published.isoformat() == "2025-08-04T04:00:00+00:00"
    assert c.published is not None and c.published.isoformat() == "2026-02-04T13:45:00+00:00"
    # the instant the agency's documents.rss gives the same document
    [entry] = parse_feed(documents_rss("2026-02222", "A rule"), source_id="fr-bis")
    assert entry.published == a.published


@pytest.mark.parametrize(
    "dates",
    [
        {"publication_date": "0001-01-02"},
        {"publication_date": "9999-12-31"},
        {"filed_at": "0001-01-01T00:00:00+01:00", "publication_date": "0001-01-02"},
        {"filed_at": "0001-01-02T08:45:00.000-05:00", "publication_date": "0001-01-02"},
    ],
)
async def test_a_date_out_of_range_is_no_date_and_the_answer_still_counts(
    store: Store,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    dates: dict[str, str],
) -> None:
    title = "Export Controls on Rare Earth Magnets and Related Items"
    odd = {**published_doc("2026-02223", "Odd dates"), **dates}
    answer = {"count": 2, "results": [published_doc("2026-02222", title), odd]}
    body = json.dumps(answer).encode()
    good, broken = parse_feed(body, source_id="fr")
    assert good.published is not None and broken.published is None
    feed_server.routes["/docs.json"] = Route(body=body, content_type="application/json")
    config, pipeline = await loopback_pipeline(
        store, session, clock, [{"id": "fr-bis-json", "url": feed_server.url("/docs.json")}],
        matcher=ree_rules(),
    )  # fmt: skip
    outcome = await pipeline.poll(config.sources[0])
    assert outcome.error is None and outcome.new_items == 2
    assert {a.item.guid for a in outcome.alerts} >= {"fr-doc:2026-02222"}


FRIDAY = datetime(2026, 2, 6, 15, 0, tzinfo=UTC)
MONDAY = datetime(2026, 2, 9, 12, 0, tzinfo=UTC)


def friday_filing(number: str, title: str) -> bytes:
    filing = {
        **pi_doc(number, title),
        "filed_at": "2026-02-06T08:45:00.000-05:00",  # Friday morning in Washington
        "publication_date": "2026-02-09",  # Monday, the next business day
    }
    return json.dumps({"count": 1, "results": [filing]}).encode()


def monday_document(number: str, title: str) -> bytes:
    published = {
        **published_doc(number, title),
        "publication_date": "2026-02-09",
        "html_url": f"https://www.federalregister.gov/documents/2026/02/09/{number}/x",
    }
    return json.dumps({"count": 1, "results": [published]}).encode()


@pytest.mark.parametrize("window_days", [1, 2])
async def test_a_friday_filing_and_its_monday_publication_alert_once_whatever_the_window(
    store: Store,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
    window_days: int,
) -> None:
    """Two and a half days apart: past a one- or two-day window (and, for one day, past
    what the story memory holds), yet one document and one story."""
    title = "Export Controls on Rare Earth Magnets and Related Items"
    feed_server.routes["/pi.json"] = Route(
        body=friday_filing("2026-02222", title), content_type="application/json"
    )
    feed_server.routes["/docs.json"] = Route(
        body=monday_document("2026-02222", title), content_type="application/json"
    )
    config, pipeline = await loopback_pipeline(
        store, session, clock,
        [{"id": "fr-public-inspection", "url": feed_server.url("/pi.json")},
         {"id": "fr-bis-json", "url": feed_server.url("/docs.json")}],
        matcher=ree_rules(), stories={"window_days": window_days},
    )  # fmt: skip
    pi, docs = config.sources
    clock.now = FRIDAY
    filed = await pipeline.poll(pi)
    assert [a.hit.rule_id for a in filed.alerts] == ["ree-export-curb"]
    clock.now = MONDAY
    published = await pipeline.poll(docs)
    assert published.new_items == 1 and published.alerts == []
    [grown] = published.stories_grown
    assert (grown.item_count, grown.source_count, grown.new_story) == (2, 2, False)
    assert len(await store.list_alerts()) == 1


async def test_a_publication_after_a_restart_joins_a_filing_older_than_the_window(
    store: Store,
    store_url: str,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    feed_server: FeedServer,
) -> None:
    """A new process reads only the recent past into memory: the filing is found in the
    store by its identity. The publication comes through documents.rss this time."""
    title = "Export Controls on Rare Earth Magnets and Related Items"
    feed_server.routes["/pi.json"] = Route(
        body=friday_filing("2026-02222", title), content_type="application/json"
    )
    rss = documents_rss("2026-02222", title).replace(b"2026/02/05", b"2026/02/09")
    feed_server.routes["/bis.rss"] = Route(
        body=rss.replace(b"Thu, 05 Feb 2026 05:00:00 GMT", b"Mon, 09 Feb 2026 05:00:00 GMT")
    )
    sources = [
        {"id": "fr-public-inspection", "url": feed_server.url("/pi.json")},
        {"id": "fr-bis", "url": feed_server.url("/bis.rss")},
    ]
    clock.now = FRIDAY
    config, pipeline = await loopback_pipeline(
        store, session, clock, sources, matcher=ree_rules(), stories={"window_days": 1}
    )
    filed = await pipeline.poll(config.sources[0])
    assert [a.hit.rule_id for a in filed.alerts] == ["ree-export-curb"]
    clock.now = MONDAY
    restarted = Store(store_url, clock=clock)
    await restarted.open()
    try:
        config, pipeline = await loopback_pipeline(
            restarted, session, clock, sources, matcher=ree_rules(), stories={"window_days": 1}
        )
        published = await pipeline.poll(config.sources[1])
    finally:
        await restarted.close()
    assert published.new_items == 1 and published.alerts == []
    [grown] = published.stories_grown
    assert (grown.item_count, grown.source_count, grown.new_story) == (2, 2, False)
    assert len(await store.list_alerts()) == 1


def test_only_a_document_itself_has_its_identity() -> None:
    [api] = parse_feed(json.dumps(published_doc("2026-02222", "A rule")).encode(), source_id="f")
    [entry] = parse_feed(documents_rss("2026-02222", "A rule"), source_id="fr-bis")
    assert document_identity(api) is not None and document_identity(entry) is not None
    # a guid that only looks like one: its content hash is its text's, a window's worth
    lookalike = make_item(source_id="s", guid="fr-doc:2026-02222", title="A rule")
    assert document_identity(lookalike) is None
    assert document_identity(make_item(source_id="s", url="https://example.org/a")) is None
