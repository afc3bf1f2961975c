"""A queue consumer for the supervise recipe (docs/recipes.md): no HTTP, no socket, no message lost.

    python3 consumer.py --queue jobs.sqlite3

The queue is a SQLite table, so that the recipe runs anywhere; with a real
broker (RabbitMQ, SQS, Redis streams) the shape is the same: take a message,
do the work, acknowledge it, and on a drain request finish the one in hand,
acknowledge it, take no more, and tell the daemon it has drained.

Readiness is the heartbeat's `ready` once the queue is open. The loop beats
from the main thread (`beat()`, not `start()`), so a consumer stuck in a job
stops beating and `heartbeat_timeout` restarts it. A message taken by a
consumer that then died (SIGKILL, the host lost power) goes back on the queue
after `--visibility` seconds, as SQS's visibility timeout or an unacked
RabbitMQ delivery does.
"""

import argparse
import os
import signal
import sqlite3
import time

from supervise.worker import Heartbeat

IDLE_POLL = 0.05  # an empty queue is polled this often (a broker would push instead)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    payload TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'ready',  -- ready | taken | done
    taken_by TEXT, taken_at REAL,
    done_by TEXT, attempts INTEGER NOT NULL DEFAULT 0
)
"""


class Queue:
    """take() and ack(): the two calls a broker client offers."""

    def __init__(self, path: str, visibility: float) -> None:
        self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(SCHEMA)
        self.visibility = visibility
        self.me = f"{os.environ.get('SUPERVISE_NAME', 'standalone')}/{os.getpid()}"

    def take(self) -> tuple[int, str] | None:
        now = time.time()
        self.db.execute("BEGIN IMMEDIATE")  # one taker at a time: a message is taken once
        try:
            row = self.db.execute(
                "SELECT id, payload FROM jobs WHERE state = 'ready' OR (state = 'taken' AND taken_at < ?) "
                "ORDER BY id LIMIT 1", (now - self.visibility,)).fetchone()
            if row is not None:
                self.db.execute("UPDATE jobs SET state = 'taken', taken_by = ?, taken_at = ?, attempts = attempts + 1 "
                                "WHERE id = ?", (self.me, now, row[0]))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return row

    def ack(self, job_id: int) -> None:
        self.db.execute("UPDATE jobs SET state = 'done', done_by = ? WHERE id = ? AND taken_by = ?",
                        (self.me, job_id, self.me))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queue", required=True, help="the SQLite file holding the jobs table")
    parser.add_argument("--work", type=float, default=0.02, help="seconds each job takes")
    parser.add_argument("--visibility", type=float, default=60.0,
                        help="seconds before a message taken by a consumer that died is taken again")
    args = parser.parse_args()

    stopping = False

    def on_term(signum, frame) -> None:
        nonlocal stopping  # only noted: the job in hand is finished first
        stopping = True

    signal.signal(signal.SIGTERM, on_term)  # the stop signal comes with the drain request
    with Heartbeat.from_env() as hb:
        queue = Queue(args.queue, args.visibility)
        hb.ready()
        done, beaten = 0, time.monotonic()
        while not (stopping or hb.draining.is_set()):
            job = queue.take()
            if job is None:
                hb.draining.wait(IDLE_POLL)
            else:
                time.sleep(args.work)  # the work
                queue.ack(job[0])
                done += 1
            if time.monotonic() - beaten >= hb.interval / 2:
                hb.beat(done=done)  # from the loop itself: a stuck job stops the beats
                beaten = time.monotonic()
        hb.drained()  # nothing in hand: the daemon may stop us now


if __name__ == "__main__":
    main()
