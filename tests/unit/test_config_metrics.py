"""``[supervise] metrics = "HOST:PORT"``: off by default, bound exactly as written, errors located."""

from __future__ import annotations

import pytest
from test_config import APP, in_tmp, load_text, problems  # noqa: F401  (in_tmp: an autouse fixture)

from supervise.runtime.metrics import host_port

EXPECTED = 'expected an address like "127.0.0.1:9750" or "[::1]:9750" (a host and a port from 1 to 65535)'


def test_off_by_default():
    assert load_text(APP).supervise.metrics is None


@pytest.mark.parametrize(("text", "host", "port"), [
    ("127.0.0.1:9750", "127.0.0.1", 9750),
    ("[::1]:9750", "::1", 9750),
    ("localhost:1", "localhost", 1),
    ("0.0.0.0:65535", "0.0.0.0", 65535),  # allowed when written: `supervise check` warns
    ("[::]:9750", "::", 9750),
    ("metrics.internal:9750", "metrics.internal", 9750),
])
def test_an_address_is_kept_as_written(text, host, port):
    config = load_text(f'[supervise]\nmetrics = "{text}"\n' + APP)
    assert config.supervise.metrics == text
    assert host_port(text) == (host, port)


@pytest.mark.parametrize("value", [
    '"127.0.0.1"', '"127.0.0.1:0"', '"127.0.0.1:65536"', '"127.0.0.1:99999999"', '":9750"', '"::1:9750"',
    '"[::1]"', '"[zz]:9750"', '"1.2.3.256:9750"', '"unix:/tmp/metrics.sock"', '"http://127.0.0.1:9750"',
    '"127.0.0.1:97a0"', '" 127.0.0.1:9750"', '""', "9750", "true", '["127.0.0.1:9750"]',
])
def test_bad_addresses_are_located(value):
    found = problems(f"[supervise]\nmetrics = {value}\n" + APP)
    assert len(found) == 1, found
    assert found[0].startswith("supervise.toml:2: supervise.metrics: expected "), found
    if value.startswith('"') and value != '""':
        assert found[0] == f"supervise.toml:2: supervise.metrics: {EXPECTED}, got {value}"


def test_a_near_miss_of_the_key_gets_a_did_you_mean():
    assert problems('[supervise]\nmetric = "127.0.0.1:9750"\n' + APP) == [
        'supervise.toml:2: supervise.metric: unknown key (did you mean "metrics"?)']
