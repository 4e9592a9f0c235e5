"""The error tree. Every error carries the context needed to act on it.

    WatcherError
    ├── ConfigError          a config file or environment value is invalid (names file and key)
    ├── RuleError            a rule file is invalid (names file, line, rule id)
    │   └── QuerySyntaxError a rule query does not parse (names the column too)
    ├── FetchError           a source could not be fetched (names the source, a fixed reason)
    ├── ParseError           fetched bytes are not a feed (names the source)
    ├── DeliveryError        a notifier could not deliver (names the receiver, retryable or not)
    └── StoreError           the database cannot be used as it is (names the table and column)

Errors never log themselves: one top-level handler (the CLI, a scheduler job,
the outbox worker) does.
"""

from __future__ import annotations

from enum import StrEnum

from watcher.redact import scrub_urls


class WatcherError(Exception):
    """Root of every error watcher raises on purpose."""


class ConfigError(WatcherError):
    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


class RuleError(WatcherError):
    def __init__(
        self,
        message: str,
        *,
        path: str,
        line: int | None = None,
        column: int | None = None,
        rule_id: str | None = None,
    ) -> None:
        self.path = path
        self.line = line
        self.column = column
        self.rule_id = rule_id
        self.message = message
        where = path if line is None else f"{path}:{line}"
        if line is not None and column is not None:
            where += f":{column}"
        who = f" rule '{rule_id}':" if rule_id else ""
        super().__init__(f"{where}:{who} {message}")


class QuerySyntaxError(WatcherError):
    """A query does not parse; `column` is 1-based within the query text."""

    def __init__(self, message: str, *, column: int) -> None:
        self.message = message
        self.column = column
        super().__init__(f"column {column}: {message}")


class FetchReason(StrEnum):
    """Why a fetch failed: a small fixed set, so logs and metric labels stay bounded."""

    TIMEOUT = "timeout"
    CONNECT = "connect"
    HTTP_STATUS = "http_status"
    TOO_LARGE = "too_large"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    BAD_URL = "bad_url"
    PROTOCOL = "protocol"
    BLOCKED_ADDRESS = "blocked_address"  # private/loopback/link-local, not allowed by config
    GONE = "gone"  # HTTP 410: the source is deactivated
    DECODING = "decoding"  # a broken gzip/deflate body


class FetchError(WatcherError):
    """A fetch failed. Its detail never holds a URL's credentials or query values: it is
    scrubbed here (see watcher.redact), as it is logged and stored for anyone to read."""

    def __init__(
        self,
        reason: FetchReason,
        detail: str,
        *,
        source_id: str,
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        detail = scrub_urls(detail)
        self.reason = reason
        self.detail = detail
        self.source_id = source_id
        self.status = status
        self.retry_after_s = retry_after_s
        super().__init__(f"source '{source_id}': {reason.value}: {detail}")


class ParseError(WatcherError):
    def __init__(self, detail: str, *, source_id: str) -> None:
        self.detail = detail
        self.source_id = source_id
        super().__init__(f"source '{source_id}': not a feed: {detail}")


class DeliveryReason(StrEnum):
    """Why a delivery failed (bounded, for metric labels)."""

    CONNECT = "connect"
    TIMEOUT = "timeout"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    CLIENT_ERROR = "client_error"
    SMTP_TRANSIENT = "smtp_transient"
    SMTP_PERMANENT = "smtp_permanent"
    CONFIG = "config"
    UNKNOWN_RECEIVER = "unknown_receiver"
    UNKNOWN = "unknown"


class DeliveryError(WatcherError):
    def __init__(
        self,
        reason: DeliveryReason,
        detail: str,
        *,
        receiver: str,
        retryable: bool,
        retry_after_s: float | None = None,
        delivered: tuple[str, ...] = (),
    ) -> None:
        """`delivered`: an email's recipients that have the message (on this attempt or an
        earlier one) although others failed; the outbox keeps them, and a retry skips them."""
        self.reason = reason
        self.detail = detail
        self.receiver = receiver
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.delivered = delivered
        super().__init__(f"receiver '{receiver}': {reason.value}: {detail}")


class StoreError(WatcherError):
    """The store cannot be opened, or its schema brought up to date without a manual step."""


class ListenError(WatcherError):
    """The API cannot listen where the config says (a port taken, a host unknown)."""
