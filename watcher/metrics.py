"""Prometheus metrics, on a registry owned by the service (no process globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # No per-source label: 10,000 sources would be 30,000 series (and ~17 MB here);
        # each source's health is in the store (`watcher sources list`, /healthz).
        self.polls = Counter("watcher_polls", "Source polls by outcome", ["outcome"], registry=r)
        self.polls_in_flight = Gauge(
            "watcher_polls_in_flight",
            "Polls running now (at most [polling] concurrency)",
            registry=r,
        )
        self.poll_lag = Gauge(
            "watcher_poll_lag_seconds",
            "How long the most overdue source has been due without its poll starting "
            "(0 while polling keeps up)",
            registry=r,
        )
        self.items = Counter("watcher_items", "New items ingested", registry=r)
        self.alerts = Counter("watcher_alerts", "Alerts raised", ["rule", "event_type"], registry=r)
        self.deliveries = Counter(
            "watcher_deliveries",
            "Delivery attempts by outcome (sent, retry, dead) and reason",
            ["receiver", "outcome", "reason"],
            registry=r,
        )
        self.outbox = Gauge(
            "watcher_outbox_deliveries",
            "Deliveries in the outbox by state and last failure reason (read at scrape time)",
            ["receiver", "state", "reason"],
            registry=r,
        )
        self.breaker_open = Gauge(
            "watcher_receiver_breaker_open",
            "1 while a receiver's circuit breaker is open",
            ["receiver"],
            registry=r,
        )
        self.notices_waiting = Gauge(
            "watcher_notices_waiting",
            "Alert notices waiting to be sent, by receiver and stream "
            "('immediate': grouping or throttle; else the digest subscription)",
            ["receiver", "stream"],
            registry=r,
        )
        self.notices_oldest = Gauge(
            "watcher_notices_oldest_age_seconds",
            "Age of the oldest waiting notice, by receiver and stream",
            ["receiver", "stream"],
            registry=r,
        )
        self.throttled = Gauge(
            "watcher_receiver_throttled",
            "1 while a receiver is at its max_per_hour (alerts wait for the next slot)",
            ["receiver"],
            registry=r,
        )
        self.rules_loaded = Gauge("watcher_rules_loaded", "Rules currently active", registry=r)
        self.rule_reloads = Counter(
            "watcher_rule_reloads",
            "Rule file reloads by outcome (ok, error: the last good rules stay active)",
            ["outcome"],
            registry=r,
        )
        self.rules_broken = Gauge(
            "watcher_rules_broken", "1 while the rule files on disk do not load", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
