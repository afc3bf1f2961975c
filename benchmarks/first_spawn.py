"""`supervise run -c CONFIG` that exits at its first spawn: the path from exec to the first worker alone.

startup.py's `instructions` figure counts this under callgrind. The spawn is
replaced, not the daemon: everything before it runs as it does for real.
"""

import os
import sys

from supervise.runtime import process

process.spawn = lambda *args, **kwargs: os._exit(0)  # type: ignore[assignment]

from supervise.cli import main  # noqa: E402

sys.exit(main(["run", "-c", sys.argv[1]]))
