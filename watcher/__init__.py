"""watcher: event-driven alerting for export-control and critical-minerals policy changes."""

from __future__ import annotations

from watcher.config import Config, load_config
from watcher.errors import (
    ConfigError,
    DeliveryError,
    FetchError,
    ParseError,
    QuerySyntaxError,
    RuleError,
    WatcherError,
)
from watcher.models import Alert, Delivery, EventType, Hit, Item, Severity
from watcher.pipeline import Pipeline, build_pipeline

__version__ = "0.1.0"

__all__ = [
    "Alert",
    "Config",
    "ConfigError",
    "Delivery",
    "DeliveryError",
    "EventType",
    "FetchError",
    "Hit",
    "Item",
    "ParseError",
    "Pipeline",
    "QuerySyntaxError",
    "RuleError",
    "Severity",
    "WatcherError",
    "__version__",
    "build_pipeline",
    "load_config",
]
