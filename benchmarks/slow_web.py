"""examples/web.py with a startup that takes STARTUP_SECONDS (default 0.2) before it is ready:
the instance whose rolling reload benchmarks/reload.py times."""

import os
import runpy
import sys
import time
from pathlib import Path

time.sleep(float(os.environ.get("STARTUP_SECONDS", "0.2")))
web = Path(__file__).resolve().parents[1] / "examples" / "web.py"
sys.argv = [str(web)]
runpy.run_path(str(web), run_name="__main__")
