"""Bring an existing database's schema up to date, additively, at start-up.

A store created by an earlier watcher lacks the tables, columns and indexes
added since. `upgrade` creates missing tables and indexes and adds each missing
column with ``ALTER TABLE ... ADD COLUMN``, using the column's own DDL (type,
server default, NOT NULL), so an upgrade never needs a manual step and never
touches existing data. A column that is NOT NULL without a server default
cannot be added to a table that has rows: that is refused with a
`StoreError` naming the table and column, instead of a half-upgraded store.
Nothing is ever dropped or renamed.
"""

from __future__ import annotations

import logging

from sqlalchemy import Connection, MetaData, inspect, text
from sqlalchemy.schema import CreateColumn

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
    for name in added:
        logger.info("store schema upgraded: added %s", name)
    return added
