"""The command line. The only place that configures logging and turns errors into exit codes."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from watcher import __version__
from watcher.config import load_config
from watcher.errors import WatcherError
from watcher.inputs import read_items
from watcher.models import DeliveryState
from watcher.redact import ScrubbingFormatter
from watcher.rulecache import RuleCache
from watcher.rules import Matcher, check_examples, load_rules
from watcher.sources_cli import add_commands as add_sources_commands

logger = logging.getLogger("watcher")

DEFAULT_RULES = [Path("rules")]


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    # every line scrubbed: a traceback may quote a URL with its credentials
    handler.setFormatter(ScrubbingFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    for noisy in ("apscheduler", "aiosqlite", "asyncio", "mail.log"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _load_matcher_or_report(paths: Sequence[Path], cache: RuleCache | None = None) -> Matcher:
    rules, errors = load_rules(paths, cache=cache)
    if errors:
        for err in errors:
            print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2)
    return Matcher(rules)


def cmd_run(args: argparse.Namespace) -> int:
    from watcher.memtrim import limit_arenas
    from watcher.service import run

    limit_arenas()  # one C heap for the service's threads (see watcher.memtrim)
    config = load_config(args.config)
    cache = RuleCache(config.rules.cache_dir) if config.rules.cache_dir else None
    rules, errors = load_rules(config.rules.paths, cache=cache)
    if errors and not rules:  # nothing would ever alert: a wrong path, most likely
        for err in errors:
            print(f"error: {err}", file=sys.stderr)
        print("error: no rule loads: not starting", file=sys.stderr)
        return 2
    # A broken rule file does not keep the rest from running: its good rules, and every
    # other file's, are in force; the errors are logged and in /healthz until it is fixed
    # (then the reload takes it), as when a file breaks while the service runs.
    for err in errors:
        logger.error("rules: %s (the other rules are in force)", err)
    run(config, Matcher(rules), [str(e) for e in errors])
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    _, errors = load_rules(config.rules.paths)
    for err in errors:
        print(f"error: {err}", file=sys.stderr)
    counts = (
        f"{len(config.sources)} source(s), {len(config.receivers)} receiver(s), "
        f"{len(config.subscriptions)} subscription(s)"
    )
    if errors:
        print(f"{args.config}: {len(errors)} rule error(s) (the config itself is valid: {counts})")
        return 1
    print(f"{args.config}: ok: {counts}")
    return 0


def cmd_rules_check(args: argparse.Namespace) -> int:
    paths = args.paths or DEFAULT_RULES
    rules, errors = load_rules(paths)
    for err in errors:
        print(f"error: {err}")
    failures = 0
    examples = 0
    for rule in rules:
        examples += len(rule.rule.examples.match) + len(rule.rule.examples.no_match)
        for failure in check_examples(rule):
            failures += 1
            print(f"fail: {rule.path}:{rule.line}: rule '{rule.rule.id}': {failure}")
    print(
        f"{len(rules)} rule(s) loaded, {len(errors)} error(s); "
        f"{examples} example(s) run, {failures} failed"
    )
    return 1 if errors or failures else 0


def cmd_rules_test(args: argparse.Namespace) -> int:
    matcher = _load_matcher_or_report([args.rules])
    for item_id, item in read_items(args.input):
        matches = [
            {"rule": h.rule_id, "event_type": h.event_type.value, "severity": h.severity.value}
            for h in matcher.match(item)
        ]
        print(json.dumps({"id": item_id, "matches": matches}, ensure_ascii=False))
    return 0


def cmd_deliveries_list(args: argparse.Namespace) -> int:
    from watcher.admin import deliveries_list

    config = load_config(args.config)
    state = DeliveryState(args.state) if args.state else None
    print(
        asyncio.run(deliveries_list(config, state=state, receiver=args.receiver, limit=args.limit))
    )
    return 0


def cmd_deliveries_retry(args: argparse.Namespace) -> int:
    from watcher.admin import deliveries_retry

    if not args.ids and not args.all_dead:
        print("error: name delivery ids, or --all-dead", file=sys.stderr)
        return 2
    config = load_config(args.config)
    n, problems = asyncio.run(deliveries_retry(config, None if args.all_dead else args.ids))
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    print(f"{n} dead deliver{'y' if n == 1 else 'ies'} queued again")
    return 2 if problems else 0


def cmd_send_test(args: argparse.Namespace) -> int:
    from watcher.admin import send_test

    print(asyncio.run(send_test(load_config(args.config), args.receiver)))
    return 0


def cmd_rules_schema(args: argparse.Namespace) -> int:
    from watcher.rules import rule_file_schema

    print(json.dumps(rule_file_schema(), indent=2, ensure_ascii=False))
    return 0


def cmd_rules_eval(args: argparse.Namespace) -> int:
    from watcher.evaluate import evaluate, format_report, read_labels

    matcher = _load_matcher_or_report([args.rules])
    report = evaluate(matcher, read_labels(args.labels))
    if args.json:
        print(json.dumps(report.as_dict(), ensure_ascii=False, indent=2))
    else:
        print(format_report(report))
    low = []
    if args.min_precision is not None and (report.precision or 0.0) < args.min_precision:
        low.append(f"precision {report.precision} < {args.min_precision}")
    if args.min_recall is not None and (report.recall or 0.0) < args.min_recall:
        low.append(f"recall {report.recall} < {args.min_recall}")
    for problem in low:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if low else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from watcher.demo import run_demo

    return asyncio.run(run_demo(rules=args.rules))


def cmd_replay(args: argparse.Namespace) -> int:
    from watcher.models import utc_now
    from watcher.replay import replay

    matcher = _load_matcher_or_report([args.rules])
    items = read_items(args.input)
    for record in asyncio.run(replay(items, matcher=matcher, clock=utc_now)):
        print(json.dumps(record, ensure_ascii=False))
    return 0


def cmd_silence(args: argparse.Namespace) -> int:
    from watcher import silence
    from watcher.models import utc_now
    from watcher.store import Store

    async def run() -> int:
        store = Store(load_config(args.config).store.url, clock=utc_now)
        await store.open()
        try:
            now = utc_now()
            async with store.engine.begin() as conn:
                if args.silence_command == "add":
                    until = silence.parse_until(args.until, now)
                    added = await silence.add_silence(
                        conn, rule=args.rule, until=until, comment=args.comment, now=now
                    )
                    print(
                        f"silence {added.id}: rule '{added.rule}' until {added.until.isoformat()}"
                    )
                elif args.silence_command == "expire":
                    gone = await silence.expire_silence(conn, args.id, now=now)
                    print(f"silence {gone.id}: rule '{gone.rule}' expired")
                else:
                    for s in await silence.list_silences(conn, now=now, include_inactive=args.all):
                        state = "active" if s.active(now) else "expired"
                        print(
                            json.dumps(
                                {"id": s.id, "rule": s.rule, "until": s.until.isoformat(),
                                 "comment": s.comment, "state": state},
                                ensure_ascii=False,
                            )
                        )  # fmt: skip
        finally:
            await store.close()
        return 0

    return asyncio.run(run())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="watcher",
        description="Alerts on export-control and critical-minerals policy changes.",
    )
    parser.add_argument("--version", action="version", version=f"watcher {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the service (scheduler, workers, API)")
    p.add_argument("-c", "--config", type=Path, default=None, help="config file (TOML)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="validate a config file and the rules it names")
    p.add_argument("-c", "--config", type=Path, default=Path("config.toml"))
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("demo", help="offline end-to-end demo on bundled sample feeds")
    p.add_argument("--rules", type=Path, default=Path("rules"), help="rules directory")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("send-test", help="send a sample alert to one receiver")
    p.add_argument("receiver", help="receiver id from the config")
    p.add_argument("-c", "--config", type=Path, default=Path("config.toml"))
    p.set_defaults(func=cmd_send_test)

    deliveries = sub.add_parser("deliveries", help="inspect and retry the outbox").add_subparsers(
        dest="deliveries_command", required=True, metavar="SUBCOMMAND"
    )
    p = deliveries.add_parser("list", help="deliveries as a table")
    p.add_argument("-c", "--config", type=Path, default=Path("config.toml"))
    p.add_argument("--state", choices=[s.value for s in DeliveryState])
    p.add_argument("--receiver")
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(func=cmd_deliveries_list)
    p = deliveries.add_parser("retry", help="queue dead deliveries again")
    p.add_argument("-c", "--config", type=Path, default=Path("config.toml"))
    p.add_argument("ids", nargs="*", type=int, help="delivery ids")
    p.add_argument("--all-dead", action="store_true", help="every dead delivery")
    p.set_defaults(func=cmd_deliveries_retry)

    rules = sub.add_parser("rules", help="validate and try rule files").add_subparsers(
        dest="rules_command", required=True, metavar="SUBCOMMAND"
    )
    p = rules.add_parser("check", help="validate rule files and run their examples")
    p.add_argument("paths", nargs="*", type=Path, help="rule files or directories (default: rules)")
    p.set_defaults(func=cmd_rules_check)
    p = rules.add_parser("test", help="match the items of a feed or JSON Lines file")
    p.add_argument("--rules", type=Path, default=Path("rules"))
    p.add_argument("--input", type=Path, required=True)
    p.set_defaults(func=cmd_rules_test)

    p = sub.add_parser(
        "replay", help="dedup, cluster, match and alert a feed or JSON Lines file (no delivery)"
    )
    p.add_argument("--rules", type=Path, default=Path("rules"))
    p.add_argument("--input", type=Path, required=True)
    p.set_defaults(func=cmd_replay)

    silence = sub.add_parser(
        "silence", help="stop sending a rule's alerts for a while"
    ).add_subparsers(dest="silence_command", required=True, metavar="SUBCOMMAND")
    p = silence.add_parser("add", help="silence a rule (fnmatch pattern) until a time")
    p.add_argument("-c", "--config", type=Path, default=None, help="config file (TOML)")
    p.add_argument("--rule", required=True, help="rule id or pattern, e.g. 'ree-*'")
    p.add_argument("--until", required=True, help="ISO 8601 time with zone, or 2h, 3d, 1w")
    p.add_argument("--comment", required=True, help="why")
    p.set_defaults(func=cmd_silence)
    p = silence.add_parser("list", help="list active silences (one JSON object each)")
    p.add_argument("-c", "--config", type=Path, default=None, help="config file (TOML)")
    p.add_argument("--all", action="store_true", help="include expired silences")
    p.set_defaults(func=cmd_silence)
    p = silence.add_parser("expire", help="end a silence now")
    p.add_argument("-c", "--config", type=Path, default=None, help="config file (TOML)")
    p.add_argument("id", type=int)
    p.set_defaults(func=cmd_silence)

    p = rules.add_parser("schema", help="print the JSON Schema of rule files")
    p.set_defaults(func=cmd_rules_schema)
    p = rules.add_parser("eval", help="precision and recall on labelled items (JSON Lines)")
    p.add_argument("--rules", type=Path, default=Path("rules"))
    p.add_argument("--labels", type=Path, required=True, help="JSON Lines with label, event_type")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--min-precision", type=float, default=None, help="exit 1 below this")
    p.add_argument("--min-recall", type=float, default=None, help="exit 1 below this")
    p.set_defaults(func=cmd_rules_eval)

    add_sources_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.func(args))
    except WatcherError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`watcher sources catalogue | head -1`): no traceback, and
        # none at exit either when Python flushes stdout into the closed pipe
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a command killed by SIGPIPE exits


def _entry() -> None:  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
