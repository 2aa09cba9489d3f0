#!/usr/bin/env python3
"""A large legacy history from a small one, for timing `import-sqlite`: the
rows of SOURCE (a file the dashboard's own code wrote, e.g.
tests/legacy/make_real_history.py) copied COPIES times into DEST, each
copy's batch ids suffixed `-cK`, so that every row is a batch of its own,
with the source's indexes (the dashboard's unique index on batch_id).

Usage: bench/grow_legacy.py SOURCE DEST COPIES
"""
import sqlite3
import sys

source, dest, copies = sys.argv[1], sys.argv[2], int(sys.argv[3])
db = sqlite3.connect(dest)
db.execute("ATTACH ? AS source", (source,))
(schema,) = db.execute("SELECT sql FROM source.sqlite_master WHERE name = 'batch_history'").fetchone()
db.execute(schema)
columns = [row[1] for row in db.execute("PRAGMA source.table_info(batch_history)")]
others = ", ".join(column for column in columns if column not in ("id", "batch_id"))
(span,) = db.execute("SELECT max(id) FROM source.batch_history").fetchone()
for copy in range(copies):
    db.execute(f"INSERT INTO batch_history (id, batch_id, {others}) "
               f"SELECT id + {copy * span}, batch_id || '-c{copy}', {others} FROM source.batch_history")
for (index,) in db.execute("SELECT sql FROM source.sqlite_master "
                           "WHERE type = 'index' AND tbl_name = 'batch_history' AND sql IS NOT NULL").fetchall():
    db.execute(index)
db.commit()
