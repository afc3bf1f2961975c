"""Other supervisors' names for an app's settings, and what supervise calls them.

Someone moving from PM2 or supervisord writes the key they know; a "did you
mean" guessed by spelling sends ``restart_delay`` to ``restart``, which is a
different thing. These answer with the setting that does that job here.
"""

from __future__ import annotations

__all__ = ["FOREIGN_APP_KEYS"]

FOREIGN_APP_KEYS: dict[str, str] = {
    "restart_delay": 'PM2\'s restart_delay is the backoff here, like backoff = { initial = "1s" } '
                     "(the first restart after a crash is immediate, later ones back off from initial)",
    "autorestart": 'supervisord\'s autorestart is restart here: "always", "on-failure" or "never"',
    "numprocs": "supervisord's numprocs is instances here",
    "startsecs": 'supervisord\'s startsecs is ready_after here (with readiness = "none"), like ready_after = "1s"',
    "min_uptime": 'PM2\'s min_uptime is ready_after here (with readiness = "none"), like ready_after = "1s"',
    "stopwaitsecs": 'supervisord\'s stopwaitsecs is stop_timeout here, like stop_timeout = "10s"',
    "kill_timeout": 'PM2\'s kill_timeout is stop_timeout here, like stop_timeout = "10s"',
    "stopsignal": 'stopsignal is stop_signal here, like stop_signal = "SIGTERM"',
    "directory": "supervisord's directory is cwd here",
    "environment": 'environment is env here, like env = { MODE = "prod" } (or env_file = ".env")',
    "max_memory_restart": 'PM2\'s max_memory_restart is max_memory here, like max_memory = "300M"',
    "startretries": "supervisord's startretries is crash_loop.max_restarts here, "
                    "like crash_loop = { max_restarts = 10 }",
    "cron_restart": 'PM2\'s cron_restart is max_age here: recycle an instance older than it, like max_age = "24h"',
    "max_requests": "counting requests is the server's own job (gunicorn: --max-requests and "
                    '--max-requests-jitter); to recycle by age, use max_age, like max_age = "24h"',
}
"""Unknown app key -> what to write instead (the message that follows "unknown key: ")."""
