"""The supervisor core, sans-IO: events in, actions out (see supervisor.py)."""

from supervise.core.supervisor import *  # noqa: F401,F403  (rewritten in the next step)
from supervise.core.supervisor import Core  # noqa: F401
