"""Bring an existing database's schema up to date, additively, at start-up.

A store created by an earlier watcher lacks the tables, columns and indexes
added since. `upgrade` creates missing tables and indexes and adds each missing
column with ``ALTER TABLE ... ADD COLUMN``, using the column's own DDL (type,
server default, NOT NULL), so an upgrade never needs a manual step and never
touches existing data. A column that is NOT NULL without a server default
cannot be added to a table that has rows: that is refused with a
`StoreError` naming the table and column, instead of a half-upgraded store.
No data is ever dropped or renamed. The one thing taken away is a unique
constraint a newer version no longer declares (`LEGACY_UNIQUE`), which loses no
row: PostgreSQL drops it; SQLite, which cannot drop a table constraint, copies
the rows into the table as now declared, in one transaction.
"""

from __future__ import annotations

import logging

from sqlalchemy import Connection, MetaData, Table, inspect, text
from sqlalchemy.schema import CreateColumn, CreateTable

from watcher.errors import StoreError

logger = logging.getLogger(__name__)


def upgrade(conn: Connection, metadata: MetaData) -> list[str]:
    """Create what is missing; return the 'table.column' / 'index' names added."""
    inspector = inspect(conn)
    existing_tables = set(inspector.get_table_names())
    metadata.create_all(conn)
    added: list[str] = []
    preparer = conn.dialect.identifier_preparer
    for table in metadata.sorted_tables:
        if table.name not in existing_tables:
            continue  # created complete by create_all
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            if not column.nullable and column.server_default is None:
                raise StoreError(
                    f"table '{table.name}' lacks column '{column.name}', which is NOT NULL "
                    "without a default: add it by hand"
                )
            ddl = CreateColumn(column).compile(dialect=conn.dialect)
            conn.execute(text(f"ALTER TABLE {preparer.format_table(table)} ADD COLUMN {ddl}"))
            added.append(f"{table.name}.{column.name}")
        indexes = {i["name"] for i in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexes:
                index.create(conn)
                added.append(str(index.name))
    dropped = drop_legacy_unique(conn, metadata)
    for name in added:
        logger.info("store schema upgraded: added %s", name)
    for name in dropped:
        logger.info("store schema upgraded: dropped unique constraint %s", name)
    return added + dropped


# Unique constraints earlier versions created that the schema no longer has:
# table -> constraint names. (deliveries: since digests and update notifications,
# one alert may reach one receiver more than once; each notification's
# idempotency key stays unique.)
LEGACY_UNIQUE: dict[str, tuple[str, ...]] = {"deliveries": ("uq_deliveries_alert_receiver",)}


def drop_legacy_unique(conn: Connection, metadata: MetaData) -> list[str]:
    """Drop the LEGACY_UNIQUE constraints a store still has; 'table.constraint' names."""
    inspector = inspect(conn)
    tables = set(inspector.get_table_names())
    dropped: list[str] = []
    for name, constraints in LEGACY_UNIQUE.items():
        if name not in tables or name not in metadata.tables:
            continue
        present = {u["name"] for u in inspector.get_unique_constraints(name)}
        legacy = [c for c in constraints if c in present]
        if not legacy:
            continue
        table = metadata.tables[name]
        if conn.dialect.name == "sqlite":
            columns = {c["name"] for c in inspector.get_columns(name)}
            _rebuild_sqlite(conn, table, columns)
        else:
            quote = conn.dialect.identifier_preparer
            for c in legacy:
                conn.execute(
                    text(
                        f"ALTER TABLE {quote.format_table(table)} DROP CONSTRAINT {quote.quote(c)}"
                    )
                )
        dropped += [f"{name}.{c}" for c in legacy]
    return dropped


def _rebuild_sqlite(conn: Connection, table: Table, columns: set[str]) -> None:
    """Copy `table`'s rows into a table declared as `table` is now, and put it in its place.

    The copy starts a transaction (an INSERT), and the drop and rename run in it,
    so a crash leaves either the old table or the new one, never neither.
    """
    quote = conn.dialect.identifier_preparer
    name = quote.format_table(table)
    scratch = quote.quote(f"{table.name}_rebuild")
    ddl = str(CreateTable(table).compile(dialect=conn.dialect)).strip()
    head = f"CREATE TABLE {name} "
    if not ddl.startswith(head):
        raise StoreError(f"table '{table.name}': cannot rebuild it to drop a constraint")
    conn.execute(text(f"DROP TABLE IF EXISTS {scratch}"))
    conn.execute(text(f"CREATE TABLE {scratch} " + ddl[len(head) :]))
    kept = ", ".join(quote.quote(c.name) for c in table.columns if c.name in columns)
    conn.execute(text(f"INSERT INTO {scratch} ({kept}) SELECT {kept} FROM {name}"))
    conn.execute(text(f"DROP TABLE {name}"))
    conn.execute(text(f"ALTER TABLE {scratch} RENAME TO {name}"))
    for index in table.indexes:
        index.create(conn)
