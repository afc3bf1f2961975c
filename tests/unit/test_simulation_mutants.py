"""The simulation must catch a broken core: each mutant here breaks one promise, and must fail it.

A mutant is one textual change to a copy of the package (the change must
apply exactly once, so a refactor that moves the code fails loudly here
rather than testing nothing). The copy runs the simulation's schedules in
a subprocess until one fails; a mutant that survives them all means the
simulation no longer checks what docs/reliability.md says it does.

To see one by hand: ``python tests/unit/test_simulation_mutants.py NAME``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SEEDS = 300  # each mutant below is caught well within this many schedules (most within ten)


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # under supervise/
    old: str
    new: str
    breaks: str  # the promise it breaks


MUTANTS = [
    Mutant("breaker-disabled", "core/policy.py",
           "return len(self.restarts) < cfg.max_restarts", "return True",
           "a crash loop trips the breaker after max_restarts in window"),
    Mutant("hang-never-stopped", "core/instance.py",
           "            return step(inst, Halt(reason), ctx)  # it serves nothing (well): no replacement first",
           "            inst.deadline = None\n            return []",
           "a hung instance gets its stop signal within heartbeat_timeout"),
    Mutant("memory-never-enforced", "core/instance.py",
           "if limit is None or rss <= limit:", "if True:",
           "a tree over max_memory for the confirming samples is replaced"),
    Mutant("processes-never-enforced", "core/instance.py",
           "count > ctx.app.max_processes):", "count > ctx.app.max_processes and False):",
           "a tree over max_processes is killed at once"),
    Mutant("no-kill-after-stop-timeout", "core/instance.py",
           "            inst.killed = True\n            return _kill(inst)\n        case State.BACKOFF",
           "            inst.killed = True\n            return []\n        case State.BACKOFF",
           "a stop ends within stop_timeout plus the kill"),
    Mutant("no-backoff", "core/instance.py",
           "delay = backoff_delay(ctx.app.backoff, inst.failures, ctx.rng)", "delay = 0.0",
           "restarts back off exponentially, within their bounds"),
    Mutant("surge-ignored", "core/group.py",
           "while len(r.active) < max(r.surge, 1) and r.pending:", "while r.pending:",
           "a rollout starts at most `surge` new instances at once"),
    Mutant("unready-promoted", "core/group.py",
           "elif succ.state is State.RUNNING:", "elif succ.state in LIVE_STATES:",
           "a new instance replaces an old one only once it is ready"),
    Mutant("dependencies-ignored", "core/fleet.py",
           "all(self.up(dep) for dep in group.config.depends_on)", "True",
           "an app starts after the apps it depends on are up"),
    Mutant("drain-order-ignored", "core/fleet.py",
           "other.live() for other in self.groups.values() if name in other.config.depends_on", "False for _ in ()",
           "in a drain an app stops after the apps that depend on it"),
    Mutant("adoption-duplicates", "core/supervisor.py",
           "resumed = Resumed(found.pid,", "resumed = Resumed(None,",
           "a new daemon adopts live workers instead of starting duplicates"),
    Mutant("timeouts-unanswered", "core/commands.py",
           "        waiter = self.waiters.pop(request_id, None)\n        if waiter is None:\n            return []",
           "        return []",
           "every command is answered by its timeout"),
    Mutant("fence-forgets-singletons", "core/supervisor.py",
           "stopped += [inst.name for inst in group.instances() if inst.spawn_id is not None]\n"
           "            actions += group.fence(self._fence_grace, now)",
           "stopped += [inst.name for inst in group.instances() if inst.spawn_id is not None]",
           "at a fence every singleton is told to stop at once and is gone within the grace and the kill"),
    Mutant("singletons-start-fenced", "core/supervisor.py",
           "if group.config.singleton and self._fenced:", "if False:",
           "a singleton never gets a Spawn while the node is fenced"),
    Mutant("spawn-drops-token", "core/instance.py",
           "Spawn(inst.spawn_id, ctx.app, inst.index, inst.fence,", "Spawn(inst.spawn_id, ctx.app, inst.index, None,",
           "every Spawn of a cluster app carries the token its slot was placed with"),
]

RUNNER = """
import sys, traceback
sys.path.insert(0, {tests!r})
import simulation
for seed in range({seeds}):
    try:
        simulation.run_schedule(seed) if seed % 2 == 0 else simulation.run_shutdown(seed)
    except Exception as exc:
        print(f"caught by seed {{seed}}: {{type(exc).__name__}}: {{str(exc).splitlines()[0]}}")
        sys.exit(0)
print("survived {seeds} schedules")
sys.exit(1)
"""


def mutate(mutant: Mutant, into: Path) -> Path:
    """A copy of the package with the mutant's one change; fails if the change does not apply exactly once."""
    package = into / "supervise"
    shutil.copytree(ROOT / "supervise", package, ignore=shutil.ignore_patterns("__pycache__"))
    target = package / mutant.file
    text = target.read_text()
    assert text.count(mutant.old) == 1, f"{mutant.name}: {mutant.old!r} is not in {mutant.file} exactly once"
    target.write_text(text.replace(mutant.old, mutant.new))
    return into


def run(mutant: Mutant, workdir: Path) -> subprocess.CompletedProcess[str]:
    copy = mutate(mutant, workdir)
    code = RUNNER.format(tests=str(Path(__file__).parent), seeds=SEEDS)
    # The copy is what gets imported: from its own directory (not this checkout's), and
    # PYTHONPATH comes before the editable install's finder.
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          cwd=copy, env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_the_simulation_catches(mutant, tmp_path):
    result = run(mutant, tmp_path)
    assert result.returncode == 0, (f"the mutant {mutant.name!r} survived: the simulation does not check that "
                                    f"{mutant.breaks}\n{result.stdout}{result.stderr}")
    assert "caught by seed" in result.stdout, result.stdout + result.stderr


def test_the_unmutated_core_survives(tmp_path):
    """The same runner on the real package: it must pass, or the mutants prove nothing."""
    unchanged = Mutant("none", "core/policy.py", "class CrashLoopBreaker:", "class CrashLoopBreaker:", "")
    result = run(unchanged, tmp_path)
    assert result.returncode == 1 and "survived" in result.stdout, result.stdout + result.stderr


if __name__ == "__main__":
    import tempfile

    for m in MUTANTS if len(sys.argv) < 2 else [m for m in MUTANTS if m.name in sys.argv[1:]]:
        with tempfile.TemporaryDirectory() as tmp:
            out = run(m, Path(tmp))
            print(f"{m.name:28s} {(out.stdout.strip() or out.stderr.strip().splitlines()[-1])}")
