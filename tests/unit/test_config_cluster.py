"""[cluster] and the per-app cluster keys: final types, defaults, and a clear error for each mistake."""

from __future__ import annotations

import pytest
from test_config import in_tmp, load_text, problems  # noqa: F401  (in_tmp: an autouse fixture)

from supervise.config.model import Placement


def test_a_full_cluster_config(tmp_path) -> None:  # the cwd: in_tmp moved there
    (tmp_path / "ca.pem").write_text("x")
    (tmp_path / "c.pem").write_text("x")
    (tmp_path / "k.pem").write_text("x")
    config = load_text("""
        [cluster]
        etcd = ["127.0.0.1:2379", "https://etcd2:2379/"]
        name = "prod"
        node = "host-1"
        lease_ttl = "10s"
        capacity = 8
        labels = { zone = "a", disk = "ssd" }
        ca = "ca.pem"
        cert = "c.pem"
        key = "k.pem"
        user = "root"
        password = "secret"

        [apps.web]
        command = "run"
        instances = 6
        placement = "cluster"
        spread = "zone"
        constraints = { disk = "ssd" }

        [apps.lock]
        command = "run"
        placement = "cluster"
        singleton = true

        [apps.agent]
        command = "run"
        placement = "every-node"
        """)
    cluster = config.cluster
    assert cluster is not None
    assert cluster.etcd == ("127.0.0.1:2379", "https://etcd2:2379")
    assert (cluster.name, cluster.node, cluster.lease_ttl, cluster.capacity) == ("prod", "host-1", 10, 8)
    assert cluster.labels == {"zone": "a", "disk": "ssd"}
    assert cluster.ca == tmp_path / "ca.pem" and cluster.user == "root"
    assert cluster.fence_margin == 2.0
    web, lock, agent = config.apps["web"], config.apps["lock"], config.apps["agent"]
    assert web.placement is Placement.CLUSTER and web.spread == "zone" and web.constraints == {"disk": "ssd"}
    assert lock.singleton and agent.placement is Placement.EVERY_NODE and agent.clustered


def test_defaults_and_no_cluster() -> None:
    config = load_text('[cluster]\netcd = "127.0.0.1:2379"\n\n[apps.web]\ncommand = "run"\n')
    assert config.cluster is not None
    assert (config.cluster.name, config.cluster.node, config.cluster.lease_ttl, config.cluster.capacity) == (
        "supervise", None, 5, None)
    assert config.cluster.fence_margin == 1.0
    assert config.apps["web"].placement is Placement.LOCAL and not config.apps["web"].clustered
    assert load_text('[apps.web]\ncommand = "run"\n').cluster is None


def test_every_mistake_is_named_with_its_line() -> None:
    found = problems("""
        [cluster]
        etcd = ["nope", 3]
        lease_ttl = 1
        labels = { zone = 3 }
        cert = "missing.pem"
        nmae = "x"

        [apps.web]
        command = "run"
        instances = 3
        placement = "clustr"
        singleton = true
        spread = "zone"
        depends_on = ["db"]

        [apps.db]
        command = "run"
        placement = "cluster"
        """)
    expected = [
        'supervise.toml:2: cluster.etcd[0]: expected an etcd endpoint like "127.0.0.1:2379"',
        "supervise.toml:2: cluster.etcd[1]: expected a non-empty string, got 3",
        "supervise.toml:3: cluster.lease_ttl: expected whole seconds, at least 2",
        "supervise.toml:4: cluster.labels.zone: expected a non-empty string, got 3",
        "supervise.toml:5: cluster.cert: no such file",
        "supervise.toml:5: cluster.cert: needs key as well",
        'supervise.toml:6: cluster.nmae: unknown key (did you mean "name"?)',
        "supervise.toml:10: apps.web.instances: a singleton runs exactly 1 instance",
        'supervise.toml:11: apps.web.placement: expected one of "local", "cluster", "every-node", got "clustr"',
        'supervise.toml:12: apps.web.singleton: a singleton needs placement = "cluster"',
        "supervise.toml:13: apps.web.spread: spread places instances on nodes",
        "supervise.toml:14: apps.web.depends_on[0]: db is a cluster app",
    ]
    for want in expected:
        assert any(line.startswith(want) for line in found), f"missing {want!r} in {found}"
    assert len(found) == len(expected), found


def test_cluster_apps_need_a_cluster() -> None:
    found = problems('[apps.web]\ncommand = "run"\nplacement = "every-node"\n')
    assert found == ['supervise.toml:3: apps.web.placement: placement = "every-node" needs a [cluster] section '
                     "(the etcd to place through)"]
    assert problems('[cluster]\nname = "x"\n') == [
        'supervise.toml:1: cluster.etcd: missing; a cluster needs its etcd endpoints, like etcd = ["127.0.0.1:2379"]']


@pytest.mark.parametrize("bad", ['name = "a/b"', 'node = ""', "capacity = -1", 'lease_ttl = "2.5s"',
                                 "etcd = []", 'user = "u"', 'labels = { "a b" = "x" }'])
def test_bad_values(bad: str) -> None:
    found = problems(f'[cluster]\netcd = ["127.0.0.1:2379"]\n{bad}\n'.replace(
        'etcd = ["127.0.0.1:2379"]\netcd = []', "etcd = []"))
    assert len(found) == 1 and "supervise.toml:" in found[0], found
