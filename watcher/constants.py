"""Every tunable default in one place, with its unit in its name."""

from __future__ import annotations

# Sources see who polls them and where to read about it: the default User-Agent is
# "watcher/0.1 (+PUBLIC_URL; purpose)" when [api] public_url is set (fetch.default_user_agent).
USER_AGENT_PRODUCT = "watcher/0.1"
USER_AGENT_PURPOSE = "export-control and critical-minerals alerting; feed poller"
USER_AGENT = f"{USER_AGENT_PRODUCT} ({USER_AGENT_PURPOSE})"

# fetch
FETCH_TIMEOUT_S = 30.0
FETCH_CONNECT_TIMEOUT_S = 10.0
FETCH_MAX_BODY_BYTES = 10 * 1024 * 1024
FETCH_MAX_REDIRECTS = 5
FETCH_CHUNK_BYTES = 64 * 1024
FETCH_PER_HOST_CONCURRENCY = 4
# a server's Retry-After is honoured up to this long (more would overflow a datetime)
FETCH_RETRY_AFTER_MAX_S = 365 * 24 * 3600.0
# A compressed body may expand at most this many times (a zip bomb expands ~1000x).
FETCH_MAX_DECOMPRESSION_RATIO = 200

# polling
POLL_INTERVAL_DEFAULT_S = 900
POLL_INTERVAL_MIN_S = 10
POLL_JITTER_FRACTION = 0.1
POLL_BACKOFF_MAX_S = 6 * 3600
# polls in flight at once (polling.concurrency): more due wait for a slot, at no cost; when
# polling fell behind, each in flight cost ~3 KB (10,000 sources every 60 s: 4,000 of them)
POLL_CONCURRENCY = 100
# the poll clock looks at the time at least this often (see service.Poller)
POLL_CLOCK_TICK_S = 1.0
# at shutdown, polls in flight get this long to finish before they are cancelled
POLL_SHUTDOWN_GRACE_S = 10.0
# First polls at start-up (sources never polled, or due) are spread so that about this
# many start per second: 10,000 sources due at once made 10,000 polls in flight (~85 MB)
POLL_STARTUP_PER_S = 100
# polls skipped because the last one still ran are logged in one line this often at most
POLL_SKIPPED_LOG_S = 60
POLL_NEXT_MAX_S = 24 * 3600  # no server hint may make us poll less often than this
POLL_ERROR_LIMIT = 10  # consecutive errors after which a source is polled rarely
POLL_BROKEN_INTERVAL_S = 24 * 3600  # how often such a source is still tried

# outbox
OUTBOX_SWEEP_INTERVAL_S = 5.0
OUTBOX_LEASE_S = 120.0
OUTBOX_MAX_ATTEMPTS = 10
OUTBOX_BACKOFF_BASE_S = 5.0
OUTBOX_BACKOFF_MAX_S = 3600.0
OUTBOX_CONCURRENCY = 50
# claimed rows a receiver keeps ready per send slot: claims come in batches big
# enough that the store's round trips hide behind the sends in flight
OUTBOX_READY_PER_SLOT = 8
RECEIVER_CONCURRENCY = 10
BREAKER_FAILURES = 5
BREAKER_COOLDOWN_S = 60.0

# noise control (watcher/group.py, watcher/digest.py)
GROUP_WAIT_S = 30.0  # alerts for one receiver within this long go out in one notification
THROTTLE_WINDOW_S = 3600.0  # max_per_hour counts the notifications of this sliding window
DIGEST_MISFIRE_GRACE_S = 24 * 3600  # the scheduler still runs a late digest job this late
DIGEST_MAX_FIRE_STEPS = 100_000  # fire times walked to catch up after downtime (bounds the loop)
GROUP_MIN_WAIT_S = 0.05  # the grouper never waits less (no busy loop on a past due time)
GROUP_MAX_ALERTS_SHOWN = 20  # a Slack message lists at most this many alerts of a group or digest

# notifiers
WEBHOOK_TIMEOUT_S = 15.0
SMTP_TIMEOUT_S = 30.0
# An idle SMTP connection is reused for at most this long: servers close idle ones
# (Postfix after 300 s, others after 60 s), and a send on a closed one fails.
SMTP_IDLE_MAX_S = 30.0
# A send must end before its row's lease does, or the outbox claims the row again and
# sends it beside the first send. The outbox cuts a send once it has used this share of
# the time left on the lease when it started; an email notifier stops a little earlier,
# so that it can still say which recipients have the message.
SEND_LEASE_SHARE = 0.9
SEND_LEASE_SHARE_EMAIL = 0.8

# source health notices (watcher/health.py): a process that claimed a notice has this long
# (at least; more for a receiver with a longer timeout) to send it before another may
HEALTH_CLAIM_LEASE_S = 600.0

# text
ITEM_TEXT_MAX_CHARS = 100_000
ITEM_TITLE_MAX_CHARS = 1_000
# a body at least this large is parsed in a worker thread (one at a time), so a large or
# hostile feed (feedparser reads ~2.5 MB/s) does not stall the event loop (parse.parse_off_loop)
PARSE_IN_THREAD_BYTES = 256 * 1024
# feedparser, the fallback for a feed lxml cannot read exactly, costs ~135 us an entry on
# an ill-formed body: past this many entries (a 10 MB body holds ~300,000 tiny ones, 45 s
# of the parse thread) such a feed is refused as a bad feed
PARSE_FALLBACK_MAX_ENTRIES = 10_000
# once bodies this large in all were parsed, the C heap's free pages go back to the
# system (watcher.memtrim)
TRIM_AFTER_PARSED_BYTES = 1024 * 1024

# story clustering
CLUSTER_WINDOW_S = 7 * 24 * 3600
CLUSTER_THRESHOLD = 0.20  # chosen on bench/cluster_quality.py
CLUSTER_TEXT_MAX_CHARS = 20_000
CLUSTER_IDF_PRIOR_DOCS = 200
CLUSTER_VECTOR_KEYS = 120
CLUSTER_INDEX_KEYS = 24
CLUSTER_LOOKUP_KEYS = 48
CLUSTER_MAX_CANDIDATES = 20
CLUSTER_ITEMS_PER_STORY_COMPARED = 20
# The cluster stage keeps the stories of this many windows back in memory (see story_store).
CLUSTER_MEMORY_WINDOWS = 2
# ... but at most this many items (whole stories, the oldest forgotten first): older
# stories are found through the store's candidate index (story_store.story_keys).
CLUSTER_MEMORY_ITEMS = 2_000
CLUSTER_MIN_SHARED_SPECIFICS = 2  # names, amounts or dates two items must share to merge
# words whose entity and term keys are remembered (each of two caches): ~100 B a word, plus
# the word; at 65,536 both came to ~22 MB in a long-running service, for ~5% of features()
CLUSTER_WORD_CACHE_ENTRIES = 8192

# store
SQLITE_TRANSACTIONS_IN_FLIGHT = 2  # Store.transaction()s at once on SQLite (one writes)
SQLITE_CACHE_KIB = 8192  # page cache per SQLite connection (SQLite's default: 2,048)
# ... but the connections of the short transactions run on the loop (poll state, outbox):
# the only writer while sources answer 304, so nothing resets its cache, which kept
# the whole sources table (10,000 sources: ~3.5 MB of the poll bench's peak)
SQLITE_LOOP_CACHE_KIB = 1024

# rules
RULES_RELOAD_INTERVAL_S = 5.0

# WebSub
WEBSUB_LEASE_MIN_S = 3600  # a hub's hub.lease_seconds is held to this range...
WEBSUB_LEASE_MAX_S = 365 * 86400
# (a lease is renewed renew_before_s before its end, but not before half of it has passed)
WEBSUB_RETRY_BASE_S = 900.0  # a request the hub refused or never verified: asked again
WEBSUB_RETRY_MAX_S = 86400.0  # within base * 2**(attempts - 1), at most this (full jitter)
WEBSUB_DENIED_RETRY_S = 86400.0  # a denied subscription: asked for again no sooner than this
WEBSUB_LOGGED_MAX_CHARS = 200  # what a request says (hub.mode, hub.reason) quoted in a log line
