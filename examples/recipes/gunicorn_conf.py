"""gunicorn settings for running under supervise (docs/recipes.md).

No `bind`: gunicorn takes the daemon's listen sockets from LISTEN_FDS by
itself. `bind = "fd://3"` would open fd 3 a second time and the instance
crash-loops with EBADF.

Readiness comes from `post_worker_init`, which gunicorn calls in each worker
once the app is imported: that is when the instance can really serve. (The
READY=1 gunicorn sends to NOTIFY_SOCKET comes from the arbiter before any
worker has imported the app, unless --preload: see gunicorn-notify.toml. An
HTTP probe on a socket shared with the old instances is answered by them.)
"""

from supervise.worker import Heartbeat

workers = 2
# gunicorn >= 25.1 opens a control socket at $XDG_RUNTIME_DIR/gunicorn.ctl or
# ~/.gunicorn/gunicorn.ctl: the same path for every instance, so they fight
# over it. Older versions do not know this setting and ignore it.
control_socket_disable = True
graceful_timeout = 30  # keep supervise's stop_timeout above it
accesslog = None


def post_worker_init(worker):
    """The app is imported in this worker: tell the daemon, then beat from a thread."""
    hb = Heartbeat.from_env()  # created here, after the fork: a ZeroMQ context does not survive fork()
    hb.ready()
    hb.start()
    worker.supervise_heartbeat = hb


def worker_exit(server, worker):
    hb = getattr(worker, "supervise_heartbeat", None)
    if hb is not None:
        hb.close()
