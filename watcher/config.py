"""Configuration: a TOML file validated by pydantic, overridable from the environment.

Every setting can be overridden by a ``WATCHER_<SECTION>__<KEY>`` environment
variable (for example ``WATCHER_STORE__URL`` or ``WATCHER_API__PORT``), and a
whole section or list by ``WATCHER_<SECTION>`` holding JSON (``WATCHER_SOURCES``).
Variable names are case-insensitive; a list-valued key takes JSON
(``WATCHER_POLLING__ALLOW_NETWORKS='["10.0.0.0/8"]'``); the environment wins over
the file; ``WATCHER_`` variables that name no section are ignored, and an unknown
key within a section is an error. Secrets never live in the file: a receiver
names the environment variable that holds its password or signing secret
(``password_env``, ``secret_env``).
"""

from __future__ import annotations

import base64
import json
import os
import tomllib
import types
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    PlainSerializer,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass as pydantic_dataclass

from watcher import constants
from watcher.errors import ConfigError
from watcher.models import EventType, Severity

Slug = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StoreConfig(_Strict):
    url: str = "sqlite+aiosqlite:///watcher.db"

    @field_validator("url")
    @classmethod
    def _supported(cls, value: str) -> str:
        return store_url(value)


# the async driver each supported database is reached with
_STORE_DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}


def store_url(value: str) -> str:
    """A store URL watcher can open: SQLite or PostgreSQL with its async driver, which is
    filled in when the URL names none (`postgresql://…` is `postgresql+asyncpg://…`).

    Said wrong here, with the key, rather than as a driver's traceback at start-up. The
    URL is not quoted back: it may hold a password.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(value)
    except ArgumentError:
        raise ValueError(
            "not a database URL (e.g. sqlite+aiosqlite:///watcher.db, "
            "postgresql+asyncpg://user@host/db)"
        ) from None
    backend = "postgresql" if url.get_backend_name() == "postgres" else url.get_backend_name()
    driver = _STORE_DRIVERS.get(backend)
    if driver is None:
        raise ValueError(
            f"'{backend}' is not a supported store: SQLite (sqlite+aiosqlite:///FILE) "
            "or PostgreSQL (postgresql+asyncpg://USER@HOST/DB)"
        )
    given = url.get_driver_name() if "+" in url.drivername else None
    if given not in (None, driver):
        raise ValueError(
            f"watcher reaches {backend} with its async driver: {backend}+{driver}://…, "
            f"not {backend}+{given}"
        )
    # the driver filled in, and "postgres" spelled as SQLAlchemy knows it
    return url.set(drivername=f"{backend}+{driver}").render_as_string(hide_password=False)


class ApiConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    public_url: str = Field(
        default="",
        description="base URL of this API as subscribers reach it (unsubscribe links); "
        "default http://HOST:PORT",
    )

    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


class RulesConfig(_Strict):
    paths: list[Path] = Field(default_factory=lambda: [Path("rules")])
    reload_interval_s: float = Field(
        default=constants.RULES_RELOAD_INTERVAL_S,
        ge=0,
        description="how often `watcher run` checks rule files for changes; 0: never",
    )
    cache_dir: Path | None = Field(
        default=None,
        description="where compiled rule files are cached by content hash; none: no cache",
    )

    @field_validator("reload_interval_s")
    @classmethod
    def _off_or_a_second(cls, value: float) -> float:
        # a scheduled job's interval: APScheduler lists every run it missed at each wake-up,
        # so a tiny one costs a run per microsecond of delay
        if 0 < value < 1:
            raise ValueError("must be 0 (never) or at least 1 second")
        return value


class PollingConfig(_Strict):
    timeout_s: float = Field(default=constants.FETCH_TIMEOUT_S, gt=0)
    connect_timeout_s: float = Field(default=constants.FETCH_CONNECT_TIMEOUT_S, gt=0)
    max_body_bytes: int = Field(default=constants.FETCH_MAX_BODY_BYTES, gt=0)
    max_redirects: int = Field(default=constants.FETCH_MAX_REDIRECTS, ge=0)
    jitter_fraction: float = Field(default=constants.POLL_JITTER_FRACTION, ge=0, le=1)
    backoff_max_s: float = Field(default=constants.POLL_BACKOFF_MAX_S, gt=0)
    # Sources on private, loopback or link-local addresses are refused unless listed here
    # (for example "127.0.0.0/8" for a feed served on this machine).
    allow_networks: list[IPvAnyNetwork] = Field(default_factory=list)
    per_host_concurrency: int = Field(default=constants.FETCH_PER_HOST_CONCURRENCY, ge=1)
    concurrency: int = Field(
        default=constants.POLL_CONCURRENCY,
        ge=1,
        description="polls in flight at once; polls due beyond it start as others end",
    )
    max_decompression_ratio: int = Field(default=constants.FETCH_MAX_DECOMPRESSION_RATIO, ge=1)
    user_agent: str | None = Field(
        default=None,
        description="the User-Agent sent to sources; default: watcher's, with [api] public_url",
    )
    # next check = clamp(max(interval, RSS ttl, max-age, Expires), min_interval_s, max_interval_s)
    min_interval_s: float = Field(default=constants.POLL_INTERVAL_MIN_S, ge=1)
    max_interval_s: float = Field(default=constants.POLL_NEXT_MAX_S, gt=0)
    error_limit: int = Field(default=constants.POLL_ERROR_LIMIT, ge=1)
    broken_interval_s: float = Field(default=constants.POLL_BROKEN_INTERVAL_S, gt=0)


class HealthConfig(_Strict):
    """Source health notices (broken or quiet sources) to an operator's receiver."""

    operator_receiver: str | None = None
    broken_after_errors: int = Field(default=5, ge=1)
    check_interval_s: float = Field(default=300.0, ge=1)


class WebSubConfig(_Strict):
    """WebSub push: subscribe to hubs that feeds advertise. Off unless callback_base_url is set."""

    callback_base_url: AnyHttpUrl | None = None  # how hubs reach this service's API
    lease_s: int = Field(default=10 * 86400, ge=60)
    renew_before_s: int = Field(default=86400, ge=60)


class OutboxConfig(_Strict):
    max_attempts: int = Field(default=constants.OUTBOX_MAX_ATTEMPTS, ge=1)
    backoff_base_s: float = Field(default=constants.OUTBOX_BACKOFF_BASE_S, gt=0)
    backoff_max_s: float = Field(default=constants.OUTBOX_BACKOFF_MAX_S, gt=0)
    sweep_interval_s: float = Field(default=constants.OUTBOX_SWEEP_INTERVAL_S, gt=0)
    lease_s: float = Field(default=constants.OUTBOX_LEASE_S, gt=0)
    concurrency: int = Field(default=constants.OUTBOX_CONCURRENCY, ge=1)
    breaker_failures: int = Field(
        default=constants.BREAKER_FAILURES, ge=1, description="consecutive failures that open it"
    )
    breaker_cooldown_s: float = Field(default=constants.BREAKER_COOLDOWN_S, gt=0)


if TYPE_CHECKING:
    from apscheduler.triggers.cron import CronTrigger

    HttpUrlStr = str
else:
    # validated (and normalised) as a URL, kept as its string: a pydantic URL object
    # per source costs more than the rest of the source's settings
    HttpUrlStr = Annotated[AnyHttpUrl, AfterValidator(str), PlainSerializer(str, return_type=str)]


@pydantic_dataclass(config=ConfigDict(extra="forbid"), slots=True)
class SourceConfig:
    """One source to poll. A slotted dataclass, not a model: a service may have 10,000."""

    id: Slug
    url: HttpUrlStr
    interval_s: int = Field(
        default=constants.POLL_INTERVAL_DEFAULT_S, ge=constants.POLL_INTERVAL_MIN_S
    )
    tags: tuple[str, ...] = ()
    language: str = ""
    enabled: bool = True
    # raise a source-health notice when no new item came for this long (off when unset)
    quiet_after_s: int | None = Field(default=None, ge=60)


def _secret_from_env(var: str | None, what: str) -> SecretStr | None:
    if var is None:
        return None
    value = os.environ.get(var)
    if value is None:
        raise ValueError(f"{what} comes from environment variable {var}, which is not set")
    return SecretStr(value)


class _ReceiverBase(_Strict):
    id: Slug
    concurrency: int = Field(
        default=constants.RECEIVER_CONCURRENCY, ge=1, description="sends in flight at once"
    )
    group_wait_s: float = Field(
        default=constants.GROUP_WAIT_S,
        ge=0,
        description="alerts for this receiver arriving within this long of the first go out "
        "in one notification; 0 sends each alert at once",
    )
    max_per_hour: int | None = Field(
        default=None,
        ge=1,
        description="at most this many notifications in any hour; alerts beyond it are folded "
        "into the next notification allowed; none: no cap",
    )


class EmailReceiverConfig(_ReceiverBase):
    type: Literal["email"]
    host: str = "localhost"
    port: int = Field(default=25, ge=1, le=65535)
    tls: Literal["none", "starttls", "implicit"] = "none"
    ca_file: Path | None = Field(default=None, description="CA bundle to verify the server")
    username: str = ""
    password_env: str | None = None
    sender: str = Field(default="watcher@localhost", alias="from")
    to: list[str] = Field(min_length=1)
    timeout_s: float = Field(default=constants.SMTP_TIMEOUT_S, gt=0)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    _password: SecretStr | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _load_secret(self) -> EmailReceiverConfig:
        self._password = _secret_from_env(self.password_env, "the SMTP password")
        if self._password is not None and not self.username:
            raise ValueError("password_env is set but username is empty")
        return self

    @property
    def password(self) -> SecretStr | None:
        return self._password


class WebhookReceiverConfig(_ReceiverBase):
    type: Literal["webhook"]
    url: AnyHttpUrl
    secret_env: str | None = None
    timeout_s: float = Field(default=constants.WEBHOOK_TIMEOUT_S, gt=0)
    _key: bytes | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _load_secret(self) -> WebhookReceiverConfig:
        secret = _secret_from_env(self.secret_env, "the webhook signing secret")
        if secret is not None:
            try:
                self._key = webhook_signing_key(secret.get_secret_value())
            except ValueError:
                raise ValueError(
                    f"the signing secret in {self.secret_env} must be 'whsec_' followed by "
                    "base64, or any other non-empty string (Standard Webhooks)"
                ) from None
        return self

    @property
    def signing_key(self) -> bytes | None:
        """The HMAC key of the secret (webhook_signing_key), None when it has none."""
        return self._key


def webhook_signing_key(secret: str) -> bytes:
    """The HMAC key a webhook secret stands for, read as README's verify() reads it: a
    `whsec_<base64>` secret is its base64-decoded bytes, any other string its UTF-8
    bytes. (The standardwebhooks library would base64-decode a plain string whenever it
    decodes, and then no receiver using the string itself as the key could verify.)
    Raises ValueError for a `whsec_` secret that is not base64, or an empty key."""
    if secret.startswith("whsec_"):
        key = base64.b64decode(secret.removeprefix("whsec_"))  # binascii.Error: a ValueError
    else:
        key = secret.encode()
    if not key:
        raise ValueError("an empty signing key")
    return key


class SlackReceiverConfig(_ReceiverBase):
    """A Slack incoming webhook. Its URL is a secret, so it comes from the environment."""

    type: Literal["slack"]
    url_env: str
    timeout_s: float = Field(default=constants.WEBHOOK_TIMEOUT_S, gt=0)
    _url: SecretStr | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _load_secret(self) -> SlackReceiverConfig:
        self._url = _secret_from_env(self.url_env, "the Slack webhook URL")
        url = self._url.get_secret_value() if self._url else ""
        if not url.startswith(("https://", "http://")):
            raise ValueError(f"{self.url_env} must hold an http(s) URL")
        return self

    @property
    def url(self) -> str:
        return self._url.get_secret_value() if self._url else ""


ReceiverConfig = Annotated[
    EmailReceiverConfig | WebhookReceiverConfig | SlackReceiverConfig,
    Field(discriminator="type"),
]
AnyReceiverConfig = EmailReceiverConfig | WebhookReceiverConfig | SlackReceiverConfig


def cron_trigger(schedule: str, timezone: str) -> CronTrigger:
    """The APScheduler trigger of a crontab line (5 fields) in an IANA time zone."""
    from apscheduler.triggers.cron import CronTrigger  # only digests need it: not at import

    return CronTrigger.from_crontab(schedule, timezone=ZoneInfo(timezone))


class SubscriptionConfig(_Strict):
    """Which alerts go to which receivers, and how. Empty filters match everything.

    `mode = "immediate"` sends alerts as they come (grouped per receiver by its
    `group_wait_s`); `mode = "digest"` lists the alerts of each period in one
    notification per receiver when `schedule` (cron, in `timezone`) fires.
    """

    id: Slug | None = Field(default=None, description="names the subscription; digests need one")
    receivers: list[str] = Field(min_length=1)
    rules: list[str] = Field(default_factory=lambda: ["*"], description="fnmatch patterns")
    event_types: list[EventType] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    sources: list[str] = Field(default_factory=list)
    min_severity: Severity = Severity.LOW
    mode: Literal["immediate", "digest"] = "immediate"
    schedule: str | None = Field(
        default=None, description="digests: a crontab line, e.g. '0 8 * * *' (daily at 08:00)"
    )
    timezone: str = Field(default="UTC", description="IANA time zone of the schedule")
    notify_updates: bool = Field(
        default=False,
        description="send an update when an alert's story is reported by more sources",
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone '{value}' (give an IANA name such as Europe/Paris)"
            ) from None
        return value

    @field_validator("schedule")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                cron_trigger(value, "UTC")
            except ValueError as exc:
                raise ValueError(
                    f"not a crontab line (minute hour day month weekday): {exc}"
                ) from None
        return value

    @model_validator(mode="after")
    def _check_mode(self) -> SubscriptionConfig:
        if self.mode == "digest":
            if self.schedule is None:
                raise ValueError('a digest needs a schedule, e.g. schedule = "0 8 * * *"')
            if self.id is None:
                raise ValueError("a digest needs an id: it names the digest's state in the store")
        elif self.schedule is not None:
            raise ValueError('schedule is only used with mode = "digest"')
        return self

    def trigger(self) -> CronTrigger:
        if self.schedule is None:
            raise ValueError(f"subscription {self.id}: no schedule")
        return cron_trigger(self.schedule, self.timezone)


class StoriesConfig(_Strict):
    """Story clustering: items reporting one event within `window_days` join one story."""

    window_days: float = Field(default=constants.CLUSTER_WINDOW_S / 86400, gt=0)
    threshold: float = Field(default=constants.CLUSTER_THRESHOLD, gt=0, le=1)
    # items of the recent past kept in memory to find candidates (older: the store's index)
    memory_items: int = Field(default=constants.CLUSTER_MEMORY_ITEMS, ge=100)


class Config(_Strict):
    """The whole configuration: the file's settings, with the environment's over them
    (`environment_overrides`), whether it is built by `load_config` or validated directly."""

    store: StoreConfig = Field(default_factory=StoreConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    rules: RulesConfig = Field(default_factory=RulesConfig)
    polling: PollingConfig = Field(default_factory=PollingConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    websub: WebSubConfig = Field(default_factory=WebSubConfig)
    sources: list[SourceConfig] = Field(default_factory=list)
    # ids from the shipped catalogue (watcher/catalogue.toml) to poll as well
    catalogue: list[str] = Field(default_factory=list)
    receivers: list[ReceiverConfig] = Field(default_factory=list)
    subscriptions: list[SubscriptionConfig] = Field(default_factory=list)
    stories: StoriesConfig = Field(default_factory=StoriesConfig)

    @model_validator(mode="before")
    @classmethod
    def _environment_then_catalogue(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, dict):
            # the environment wins over the file (and its catalogue list is expanded too):
            # as load_config read it, else read here (a Config validated directly)
            context = info.context or {}
            overrides = context.get(_ENVIRONMENT)
            if overrides is None:
                overrides = environment_overrides(os.environ)[0]
            data = _deep_merge(data, overrides)
        if isinstance(data, dict) and isinstance(data.get("catalogue"), list):
            data = _with_catalogue(data)
        return data

    @field_validator("catalogue")
    @classmethod
    def _known_ids(cls, ids: list[str]) -> list[str]:
        from watcher.catalogue import check_ids

        return check_ids(ids)

    @model_validator(mode="after")
    def _check_references(self) -> Config:
        problems: list[str] = []
        for kind, ids in (
            ("source", [s.id for s in self.sources]),
            ("receiver", [r.id for r in self.receivers]),
            ("subscription", [s.id for s in self.subscriptions if s.id is not None]),
        ):
            seen: set[str] = set()
            for ident in ids:
                if ident in seen:
                    problems.append(f"duplicate {kind} id '{ident}'")
                seen.add(ident)
        receiver_ids = {r.id for r in self.receivers}
        for i, sub in enumerate(self.subscriptions):
            problems.extend(
                f"subscriptions[{i}].receivers: unknown receiver '{name}'"
                for name in sub.receivers
                if name not in receiver_ids
            )
        operator = self.health.operator_receiver
        if operator is not None and operator not in receiver_ids:
            problems.append(f"health.operator_receiver: unknown receiver '{operator}'")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _check_timeouts(self) -> Config:
        """Each receiver's timeout_s is under half the outbox lease: a send starts with at
        least half its lease left (the outbox gives back rows with less), and a send that
        outlives its lease is cut short (or, were it not, sent twice)."""
        lease_s = self.outbox.lease_s
        problems = [
            f"receivers[{i}].timeout_s ({r.timeout_s:g}) must be less than half of "
            f"outbox.lease_s ({lease_s:g}), or a send may outlive its lease"
            for i, r in enumerate(self.receivers)
            if r.timeout_s >= lease_s / 2
        ]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def receiver(self, receiver_id: str) -> AnyReceiverConfig | None:
        return next((r for r in self.receivers if r.id == receiver_id), None)


def _with_catalogue(data: dict[str, Any]) -> dict[str, Any]:
    """The config's sources with the catalogue entries it names (see catalogue.expand)."""
    from watcher.catalogue import expand

    configured = data.get("sources") or []
    if not isinstance(configured, list):
        return data  # not a list of sources: validation says so
    # a source already validated (a Config validated again) as the table it came from
    tables = [asdict(s) if isinstance(s, SourceConfig) else s for s in configured]
    return {**data, "sources": expand(data["catalogue"], tables)}


_ENVIRONMENT = "environment"  # validation context: the overrides load_config has read
ENV_PREFIX = "watcher_"  # compared case-insensitively, as the rest of a variable's name
ENV_DELIMITER = "__"  # between section and key: WATCHER_STORE__URL


def environment_overrides(
    environ: Mapping[str, str],
) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """The settings `WATCHER_<SECTION>[__<KEY>...]` variables give, and which variable
    gave each (by its place in the config, for error messages).

    `WATCHER_<SECTION>` holds JSON (a section's table, or a list such as
    `WATCHER_SOURCES`); `WATCHER_<SECTION>__<KEY>` a value, as text that
    validation converts, or JSON where the key holds a list. Names are
    case-insensitive; variables naming no section are not ours (for example
    `WATCHER_SMTP_PASSWORD`, named by a receiver) and are left alone; a key a
    section does not have is kept, for validation to reject.
    """
    ours: dict[str, tuple[str, str]] = {}  # lower-cased name -> (name as set, value)
    for name, text in environ.items():
        if name.lower().startswith(ENV_PREFIX):
            ours[name.lower()] = (name, text)
    data: dict[str, Any] = {}
    origins: dict[tuple[str, ...], str] = {}
    if not ours:
        return data, origins
    for section, info in Config.model_fields.items():
        var = f"{ENV_PREFIX}{section}"
        value: Any = None
        if var in ours:
            name, text = ours[var]
            value = _json_from(name, text)
            origins[(section,)] = name
        nested: dict[str, Any] = {}
        for lowered, (name, text) in ours.items():
            if not lowered.startswith(var + ENV_DELIMITER):
                continue
            *keys, last = lowered.removeprefix(var + ENV_DELIMITER).split(ENV_DELIMITER)
            node: Any = nested
            model: Any = info.annotation
            for key in keys:
                model = _field_type(model, key)
                if isinstance(node, dict):
                    node = node.setdefault(key, {})
            leaf = _field_type(model, last)
            leaf_value: Any = text
            if leaf is not None and text and _takes_json(leaf):
                leaf_value = _json_from(name, text)
            if isinstance(node, dict):
                node[last] = leaf_value
                origins[(section, *keys, last)] = name
        if nested:
            value = _deep_merge(value, nested) if isinstance(value, dict) else nested
        if isinstance(value, dict):
            value = _field_names(info.annotation, value)
        if value is not None:  # JSON null: as if unset
            data[section] = value
    return data, origins


def _json_from(name: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:  # the message names where, never the value (it may be secret)
        where = (
            f" (line {exc.lineno}, column {exc.colno})"
            if isinstance(exc, json.JSONDecodeError)
            else ""
        )
        raise ValueError(f"environment variable {name}: not valid JSON{where}") from None


def _fields(model: Any) -> dict[str, Any]:
    """A model's field types by name; {} for anything else (a list, say: no keys within)."""
    if isinstance(model, type) and issubclass(model, BaseModel):
        return {n: f.annotation for n, f in model.model_fields.items()}
    return {}


def _field_type(model: Any, key: str) -> Any:
    """The type of `model`'s field named `key` (case-insensitively), or None."""
    return next((t for n, t in _fields(model).items() if n.lower() == key), None)


def _field_names(model: Any, values: dict[str, Any]) -> dict[str, Any]:
    """`values` with keys matched case-insensitively to `model`'s field names."""
    names = {n.lower(): n for n in _fields(model)}
    return {names.get(k.lower(), k): v for k, v in values.items()}


def _takes_json(annotation: Any) -> bool:
    """A list, table or model: given as JSON in one variable (also within `X | None`)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _takes_json(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return any(_takes_json(a) for a in get_args(annotation))
    return origin in (list, tuple, set, frozenset, dict) or bool(_fields(annotation))


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `over`'s values, tables merged key by key (`over` wins)."""
    if not over:
        return base
    merged = dict(base)
    for key, value in over.items():
        old = merged.get(key)
        merged[key] = (
            _deep_merge(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
        )
    return merged


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("email", "webhook", "slack") or part.startswith("function-"):
            continue
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


def format_validation_error(
    err: ValidationError, origins: Mapping[tuple[str, ...], str] | None = None
) -> list[str]:
    """One line per problem, `place: message`; given `origins` (from
    `environment_overrides`), a value set by a variable names the variable too."""
    problems = []
    for e in err.errors(include_url=False, include_input=False):
        msg = str(e["msg"]).removeprefix("Value error, ")
        if e["type"] == "unexpected_keyword_argument":  # a dataclass's word for it
            msg = "Extra inputs are not permitted"
        loc = tuple(e["loc"])
        where = _format_loc(loc)
        if origins and loc:
            path = tuple(str(part) for part in loc)
            # the variable that set this place or one holding it, else those set within it
            var = next(
                (origins[path[:n]] for n in range(len(path), 0, -1) if path[:n] in origins), None
            )
            names = [var] if var else [v for k, v in origins.items() if k[: len(path)] == path]
            if names:
                where += f" (from {', '.join(sorted(names))})"
        problems.append(f"{where}: {msg}")
    return problems


def load_config(path: Path | None) -> Config:
    """Load and validate a config file; ``None`` gives the defaults (plus environment)."""
    data: dict[str, Any] = {}
    name = str(path) if path is not None else "(defaults)"
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(name, ["file not found"]) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(name, [f"cannot read: {exc}"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(name, [f"invalid TOML: {exc}"]) from None
    try:
        overrides, origins = environment_overrides(os.environ)
    except ValueError as exc:
        raise ConfigError(name, [str(exc)]) from None
    try:  # the environment over the file
        config = Config.model_validate(data, context={_ENVIRONMENT: overrides})
    except ValidationError as exc:
        raise ConfigError(name, format_validation_error(exc, origins)) from None
    if path is not None:
        # Relative rule paths are relative to the config file.
        base = path.resolve().parent
        config.rules.paths = [p if p.is_absolute() else base / p for p in config.rules.paths]
        if config.rules.cache_dir is not None and not config.rules.cache_dir.is_absolute():
            config.rules.cache_dir = base / config.rules.cache_dir
    return config
