#!/usr/bin/env python3
"""Run `python -m supervise ...` under cProfile, for `--daemon-python-args`:

    python benchmarks/scale.py --sizes 4900 --runs 1 --only spawn --only shutdown \\
        --daemon-python-args "benchmarks/profiled.py /tmp/daemon.prof"

becomes `python benchmarks/profiled.py /tmp/daemon.prof -m supervise run -c FILE`. The daemon
ends with os._exit (it skips the interpreter's teardown), so `python -m cProfile -o` never
writes its file: here the profile is written just before that os._exit. Main thread only.
"""

import cProfile
import os
import runpy
import sys

out = sys.argv[1]
if sys.argv[2:4] != ["-m", "supervise"]:
    sys.exit("usage: profiled.py OUT.prof -m supervise ARGS...")
profile = cProfile.Profile()
real_exit = os._exit


def exit_after_dump(code: int) -> None:
    profile.disable()
    profile.dump_stats(out)
    real_exit(code)


os._exit = exit_after_dump
sys.argv = [sys.argv[0], *sys.argv[4:]]
profile.enable()
runpy.run_module("supervise", run_name="__main__", alter_sys=True)
