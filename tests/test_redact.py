from __future__ import annotations

import subprocess
import sys

import pytest

from watcher.redact import redact_url, scrub_urls


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://example.org/feed.xml", "https://example.org/feed.xml"),
        ("https://u:p@example.org:8443/a//b", "https://example.org:8443/a//b"),
        ("http://h/f?token=abc&x=1", "http://h/f?token=…&x=…"),
        ("http://h/f?abc123&=v&" + "n" * 50 + "=v", "http://h/f?…&…&…"),
        ("http://h/f#access_token=abc", "http://h/f#…"),
        ("//u:p@h/x?q", "//h/x?…"),
        ("/relative?key=v", "/relative?key=…"),
        ("not a url at all", "not a url at all"),
        ("http://[::1", "http://[::1"),  # malformed: still no exception
        # a password holding "/", "?" or "#" unescaped ends the authority early
        ("https://u:pa/ss@example.org/feed", "https://example.org/feed"),
        ("https://u:pa?ss@example.org/feed?k=v", "https://example.org/feed?k=…"),
        ("https://u:pa#ss@example.org/f", "https://example.org/f"),
        ("https://u:pa/s@s@example.org/f?mail=a@b", "https://example.org/f?mail=…"),
        # ... which a port, an "@" in a path or an IPv6 literal is not
        ("https://example.org:8443/@user?x=a@b", "https://example.org:8443/@user?x=…"),
        ("https://mastodon.example/@user.rss", "https://mastodon.example/@user.rss"),
        ("https://[::1]:80/@x", "https://[::1]:80/@x"),
        ("https://host:/@x", "https://host:/@x"),
        ("https://host:abc/feed", "https://host:abc/feed"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert redact_url(shown) == shown  # redacting twice changes nothing


def test_scrub_urls_keeps_the_quotes_around_a_url() -> None:
    text = "400, message='Bad status line', url='http://h:81/feed?token=SECRET'"
    assert scrub_urls(text) == "400, message='Bad status line', url='http://h:81/feed?token=…'"
    assert scrub_urls("see <https://u:pw@h/x?k=v>.") == "see <https://h/x?k=…>."


def test_scrub_urls_hides_a_password_holding_a_slash() -> None:
    text = "400, message='Bad Request', url='https://u:pa/ss@gov.example/f'"
    assert scrub_urls(text) == "400, message='Bad Request', url='https://gov.example/f'"


def test_the_service_log_scrubs_urls_out_of_tracebacks() -> None:
    """What `watcher run` logs goes through the same redaction as error text: a
    traceback quoting a library's exception holds no credentials or query values."""
    script = (
        "import logging\n"
        "from watcher.cli import _setup_logging\n"
        "_setup_logging(verbose=False)\n"
        "try:\n"
        "    raise ValueError('hub refused https://user:s3cret@hub.example/sub?key=k3y')\n"
        "except ValueError:\n"
        "    logging.getLogger('watcher.service').exception('WebSub renewal failed')\n"
        "logging.getLogger('watcher').info('polled %s', 'http://x.example/f?token=t0ken')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    log = done.stderr
    assert "WebSub renewal failed" in log and "Traceback" in log and "ValueError" in log
    assert "https://hub.example/sub?key=…" in log and "http://x.example/f?token=…" in log
    for secret in ("s3cret", "user:", "k3y", "t0ken"):
        assert secret not in log
