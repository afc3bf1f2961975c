"""Fixtures of the worker client's tests (test_worker.py, test_worker_spares.py): an ipc endpoint,
a FakeDaemon bound on it, and a check that no thread died of an exception."""

from __future__ import annotations

import asyncio
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakedaemon import FakeDaemon


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[str]:
    path = tmp_path / "hb.sock"
    if len(str(path)) < 100:  # sun_path holds 108 bytes
        yield f"ipc://{path}"
        return
    with tempfile.TemporaryDirectory(prefix="hb") as short:
        yield f"ipc://{short}/hb.sock"


@pytest.fixture
def daemon(endpoint: str) -> Iterator[FakeDaemon]:
    fake = FakeDaemon(endpoint).bind()
    yield fake
    fake.close()


@pytest.fixture
def thread_errors(monkeypatch: pytest.MonkeyPatch) -> Iterator[list]:
    """Fails the test if any thread (the I/O thread above all) dies of an exception."""
    errors: list = []
    monkeypatch.setattr(threading, "excepthook", errors.append)
    yield errors
    assert not errors, [(e.thread.name, e.exc_value) for e in errors]


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A new event loop, closed after the test (driven with looping.pump)."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()
