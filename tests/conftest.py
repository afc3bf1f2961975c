import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import Supervisor  # noqa: E402


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Callable[..., Supervisor]]:
    """Factory: ``supervisor(config_text)`` gives a started daemon; all is cleaned up after."""
    made: list[Supervisor] = []

    def make(config: str, start: bool = True) -> Supervisor:
        sup = Supervisor(tmp_path, config)
        made.append(sup)
        return sup.start() if start else sup

    yield make
    leaked = [pid for sup in made for pid in sup.cleanup()]
    assert not leaked, f"processes left behind after the test: {leaked}"
