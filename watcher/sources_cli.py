"""`watcher sources list` (health table) and `watcher sources check [ID...]` (no alerts)."""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import datetime
from pathlib import Path

from watcher.config import Config, SourceConfig, load_config
from watcher.errors import FetchError, ParseError
from watcher.fetch import Fetcher, fetch_session, limits_from_config
from watcher.health import diagnose, error_text, is_broken, quiet_since
from watcher.models import Clock, utc_now
from watcher.pipeline import parse_fetched
from watcher.redact import redact_url
from watcher.store import SourceState, Store
from watcher.text import one_line


def _when(value: datetime | None, now: datetime) -> str:
    if value is None:
        return "-"
    seconds = (value - now).total_seconds()
    ago = seconds < 0
    seconds = abs(seconds)
    if seconds < 90:
        text = f"{seconds:.0f}s"
    elif seconds < 5400:
        text = f"{seconds / 60:.0f}m"
    elif seconds < 172_800:
        text = f"{seconds / 3600:.0f}h"
    else:
        text = f"{seconds / 86_400:.0f}d"
    return f"{text} ago" if ago else f"in {text}"


def _status(
    source: SourceConfig,
    state: SourceState | None,
    broken_after_errors: int,
    quiet: tuple[datetime | None, datetime | None],
    now: datetime,
) -> str:
    """The source's status, by the rules of the operator's notices (watcher.health);
    `quiet` is what quiet is counted from (health.quiet_since)."""
    if not source.enabled:
        return "disabled"
    if state is not None and not state.active:
        return "gone (410)"
    if state is None or state.last_polled_at is None:
        return "never polled"
    if is_broken(state, broken_after_errors):
        return f"BROKEN ({state.error_count} errors)"
    last_new, first_success = quiet
    # as the monitor notes it (the row's first success), whether or not it runs
    first_success = first_success or state.first_success_at or state.last_success_at
    problem = diagnose(
        source.id, state, last_new, quiet_after_s=source.quiet_after_s,
        broken_after_errors=broken_after_errors, now=now, first_success_at=first_success,
    )  # fmt: skip
    if problem is not None and problem[0] == "quiet":
        since = last_new or first_success
        age = _when(since, now).removesuffix(" ago")
        return f"QUIET (nothing new for {age})"
    if state.error_count:
        return f"failing ({state.error_count})"
    return "ok"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


async def sources_list(config: Config, *, clock: Clock = utc_now) -> str:
    """The health table of every configured source, from the store."""
    store = Store(config.store.url, clock=clock)
    await store.open()
    try:
        states = {s.id: s for s in await store.list_sources()}
        quiet = await quiet_since(store)
    finally:
        await store.close()
    now = clock()
    rows = [["SOURCE", "STATUS", "LAST SUCCESS", "LAST ERROR", "NEXT CHECK", "ITEMS SEEN"]]
    for source in config.sources:
        state = states.get(source.id)
        error = "-"
        if state is not None and state.last_error and (state.error_count or not state.active):
            error = error_text(source.id, state.last_error_reason, state.last_error)[:60]
        quiet_from = quiet.get(source.id, (None, None))
        status = _status(source, state, config.health.broken_after_errors, quiet_from, now)
        rows.append(
            [
                source.id,
                status,
                _when(state.last_success_at if state else None, now),
                error,
                _when(state.next_poll_at if state and state.active else None, now),
                str(state.items_seen if state else 0),
            ]
        )
    moved = [
        f"{s.id}: moved permanently to {redact_url(states[s.id].moved_url or '')}"
        for s in config.sources
        if s.id in states and states[s.id].moved_url
    ]
    return _table(rows) + ("\n\n" + "\n".join(moved) if moved else "")


async def sources_check(
    config: Config, ids: list[str], *, clock: Clock = utc_now
) -> tuple[str, int]:
    """Fetch and parse sources once; report. Writes nothing: no state, no items, no alerts."""
    known = {s.id: s for s in config.sources}
    unknown = [i for i in ids if i not in known]
    if unknown:
        return f"unknown source(s): {', '.join(unknown)}", 2
    chosen = [known[i] for i in ids] if ids else [s for s in config.sources if s.enabled]
    limits = limits_from_config(config.polling, public_url=config.api.public_url)
    lines: list[str] = []
    failed = 0
    now = clock()
    async with fetch_session(limits) as session:
        fetcher = Fetcher(session=session, limits=limits, clock=clock)

        async def check(source: SourceConfig) -> list[str]:
            start = time.perf_counter()
            try:
                result = await fetcher.fetch(source.id, str(source.url))
                parsed = await parse_fetched(source, result)
            except (FetchError, ParseError) as exc:
                return [f"{source.id}: FAILED: {exc}"]
            ms = (time.perf_counter() - start) * 1000
            out = [
                f"{source.id}: ok: {len(parsed.items)} item(s), {len(result.body)} bytes "
                f"in {ms:.0f} ms ({result.content_type or 'no content type'})"
            ]
            if result.moved_to:
                out.append(f"  moved permanently to {redact_url(result.moved_to)}")
            if parsed.ttl_s or result.fresh_for_s:
                out.append(
                    f"  server hints: ttl {parsed.ttl_s or '-'} s, fresh for "
                    f"{result.fresh_for_s or '-'} s"
                )
            newest = sorted(
                parsed.items, key=lambda i: i.published or datetime.min.replace(tzinfo=now.tzinfo)
            )[-3:]
            # a title goes to a terminal: one line, no escape sequence or bidi override
            out.extend(f"  - {one_line(i.title[:90] or i.url or i.guid)}" for i in reversed(newest))
            return out

        for report in await asyncio.gather(*(check(s) for s in chosen)):
            failed += report[0].split(": ", 2)[1] == "FAILED"
            lines.extend(report)
    lines.append(f"{len(chosen)} source(s) checked, {failed} failed (nothing was stored)")
    return "\n".join(lines), 1 if failed else 0


def catalogue_table() -> str:
    from watcher.catalogue import catalogue

    rows = [["ID", "FORMAT", "LANG", "JURISDICTION", "TAGS", "URL"]]
    rows.extend(
        [e.id, e.format, e.language, e.jurisdiction, ",".join(e.tags), e.url]
        for e in catalogue().values()
    )
    return (
        _table(rows)
        + '\n\nEnable entries with `catalogue = ["id", ...]` in the config. '
        + "The URLs were not checked live from the development machine."
    )


def cmd_sources_catalogue(args: argparse.Namespace) -> int:
    print(catalogue_table())
    return 0


def cmd_sources_list(args: argparse.Namespace) -> int:
    print(asyncio.run(sources_list(load_config(args.config))))
    return 0


def cmd_sources_check(args: argparse.Namespace) -> int:
    text, code = asyncio.run(sources_check(load_config(args.config), list(args.ids)))
    print(text)
    return code


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sources = sub.add_parser("sources", help="source health and one-off checks").add_subparsers(
        dest="sources_command", required=True, metavar="SUBCOMMAND"
    )
    p = sources.add_parser("list", help="health table: last success, last error, next check")
    p.add_argument("-c", "--config", type=Path, default=Path("config.toml"))
    p.set_defaults(func=cmd_sources_list)
    p = sources.add_parser("check", help="fetch and parse sources once and report (no alerts)")
    p.add_argument("ids", nargs="*", help="source ids (default: every enabled source)")
    p.add_argument("-c", "--config", type=Path, default=Path("config.toml"))
    p.set_defaults(func=cmd_sources_check)
    p = sources.add_parser("catalogue", help="the shipped catalogue of real sources")
    p.set_defaults(func=cmd_sources_catalogue)
