"""A cluster singleton that writes to a shared database, guarded by its fencing token.

    LEDGER_DB=/tmp/ledger.sqlite python3 examples/cluster/ledger.py

Every second it appends one row to a ledger. The database keeps the highest
fencing token it has seen and refuses a write that carries a lower one: a
holder that lost its placement (its node was cut off, paused, declared dead)
cannot write once the new holder has, whatever it believes. That check is
what makes "at most one writer" hold at the database, not only on the hosts.

The heartbeat client stops this process by itself (exit status 75) when its
node's lease is not renewed in time; ``on_fenced`` is told first. Standalone
(not run by supervise) it writes with token 0.

SQLite stands in for a real shared database so that the demo runs on one
machine; on several hosts, point it at something they all reach and do the
same compare-and-write in one transaction.
"""

import os
import signal
import sqlite3
import sys
import threading

from supervise.worker import Heartbeat


class Stale(Exception):
    """The database has seen a newer token: another placement holds the slot now."""


def connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, timeout=5)  # transactions by hand
    db.execute("CREATE TABLE IF NOT EXISTS fence (name TEXT PRIMARY KEY, token INTEGER NOT NULL)")
    db.execute("CREATE TABLE IF NOT EXISTS ledger (seq INTEGER PRIMARY KEY, token INTEGER, writer TEXT)")
    return db


def append(db: sqlite3.Connection, token: int, writer: str) -> int:
    """One row, written only if no newer token has written before: check and write in one transaction."""
    db.execute("BEGIN IMMEDIATE")  # takes the write lock: the check and the write cannot interleave
    try:
        row = db.execute("SELECT token FROM fence WHERE name = 'ledger'").fetchone()
        if row is not None and row[0] > token:
            raise Stale(f"the ledger has seen token {row[0]}, ours is {token}")
        db.execute("INSERT OR REPLACE INTO fence VALUES ('ledger', ?)", (token,))
        seq = db.execute("INSERT INTO ledger (token, writer) VALUES (?, ?)", (token, writer)).lastrowid
        db.execute("COMMIT")
        return seq or 0
    except BaseException:
        db.execute("ROLLBACK")
        raise


def main() -> int:
    hb = Heartbeat.from_env()
    token = hb.fencing_token or 0  # SUPERVISE_FENCING_TOKEN; None standalone
    name = f"{os.environ.get('SUPERVISE_NAME', 'ledger')}@{os.environ.get('NODE', os.uname().nodename)}"
    hb.on_fenced = lambda: print(f"{name}: fenced (lease not renewed in time), exiting", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    db = connect(os.environ.get("LEDGER_DB", "ledger.sqlite"))
    print(f"{name}: pid {os.getpid()}, fencing token {token}", flush=True)
    hb.ready()
    hb.start()
    while not (stop.is_set() or hb.draining.is_set()):
        try:
            seq = append(db, token, name)
        except Stale as exc:
            print(f"{name}: refused: {exc}", flush=True)
            return 1
        print(f"{name}: wrote row {seq} with token {token}", flush=True)
        stop.wait(1.0)
    hb.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
