"""The active rule set of `watcher run`, reloaded when rule files change on disk.

`RuleSet` holds the current `Matcher` and is what the pipeline calls for it.
`check()` (an APScheduler job in the service) hashes the rule files; when the
hash changes it loads them off the event loop and swaps the matcher. A broken
file is reported (log, `watcher_rule_reloads{outcome="error"}`,
`watcher_rules_broken`, `/healthz`) and the last good rules stay active.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from watcher.metrics import Metrics
from watcher.models import Clock, Hit, Item
from watcher.rulecache import RuleCache
from watcher.rules import Matcher, load_rules, rule_files

logger = logging.getLogger(__name__)


def fingerprint(paths: Sequence[Path]) -> str:
    """A hash of the names and contents of every rule file under `paths`."""
    digest = hashlib.sha256()
    for path in rule_files(paths):
        digest.update(str(path).encode() + b"\0")
        try:
            digest.update(path.read_bytes())
        except OSError as exc:
            digest.update(f"unreadable: {exc.errno}".encode())
        digest.update(b"\0")
    return digest.hexdigest()


class RuleSet:
    """The rules in force: a Matcher that a reload swaps whole."""

    def __init__(
        self,
        paths: Sequence[Path],
        matcher: Matcher,
        *,
        clock: Clock,
        metrics: Metrics | None = None,
        cache: RuleCache | None = None,
        errors: Sequence[str] = (),
    ) -> None:
        """`errors`: what the files in force failed with at start-up (their good rules
        are `matcher`'s): reported as a failed reload is, until the files change."""
        self.paths = list(paths)
        self.cache = cache
        self.matcher = matcher
        self.clock = clock
        self.metrics = metrics
        self.errors: list[str] = list(errors)
        self.loaded_at = clock().isoformat()
        self.failed_at: str | None = self.loaded_at if self.errors else None
        self._fingerprint = fingerprint(self.paths)
        if metrics is not None:
            metrics.rules_loaded.set(len(matcher))
            metrics.rules_broken.set(1 if self.errors else 0)

    def __call__(self) -> Matcher:
        return self.matcher

    def __len__(self) -> int:
        return len(self.matcher)

    def match(self, item: Item) -> list[Hit]:
        return self.matcher.match(item)

    async def check(self) -> bool:
        """Reload when the files changed; True when new rules were swapped in."""
        current = await asyncio.to_thread(fingerprint, self.paths)
        if current == self._fingerprint:
            return False
        self._fingerprint = current
        try:
            rules, found = await asyncio.to_thread(load_rules, self.paths, cache=self.cache)
            errors = [str(e) for e in found]
            matcher = None if errors else await asyncio.to_thread(Matcher, rules)
        except Exception as exc:  # a bug on some input: said where the rule errors are
            logger.exception("rules: loading the changed files failed unexpectedly")
            errors = [f"unexpected error loading the rules: {type(exc).__name__}: {exc}"]
            matcher = None
        if matcher is None:
            self.errors = errors
            self.failed_at = self.clock().isoformat()
            for err in errors:
                logger.error("rules not reloaded, the last good rules stay active: %s", err)
            if self.metrics is not None:
                self.metrics.rule_reloads.labels("error").inc()
                self.metrics.rules_broken.set(1)
            return False
        self.matcher = matcher
        self.errors = []
        self.failed_at = None
        self.loaded_at = self.clock().isoformat()
        logger.info("rules reloaded: %d rule(s)", len(matcher))
        if self.metrics is not None:
            self.metrics.rule_reloads.labels("ok").inc()
            self.metrics.rules_broken.set(0)
            self.metrics.rules_loaded.set(len(matcher))
        return True

    def status(self) -> dict[str, Any]:
        """For /healthz: what is active and whether the files on disk load."""
        out: dict[str, Any] = {"active": len(self.matcher), "loaded_at": self.loaded_at}
        if self.errors:
            out.update(status="error", failed_at=self.failed_at, errors=self.errors)
        else:
            out["status"] = "ok"
        return out
