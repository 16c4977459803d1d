"""Listen only where needed: the CLI's LocalCluster binds every port (dashboard included) to loopback."""

import ipaddress

import psutil
import pytest

from lensdask import config
from lensdask.cluster import cluster_client


def _listening(pids: set[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every listening TCP socket of ``pids``."""
    out = []
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        out += [(pid, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    return out


def test_the_default_dashboard_address_is_loopback():
    assert config.get("cluster.dashboard_address").startswith("127.0.0.1:")


@pytest.mark.slow
def test_the_cli_local_cluster_listens_on_loopback_only(capsys):
    me = psutil.Process()
    # sockets other clusters of this test session already hold are not the CLI's
    before = set(_listening({me.pid} | {p.pid for p in me.children(recursive=True)}))
    with cluster_client("local") as client:
        assert client.run(lambda: 1)  # workers are up and listening
        link = client.dashboard_link
        pids = {me.pid} | {p.pid for p in me.children(recursive=True)}
        sockets = [s for s in _listening(pids) if s not in before]
    assert "127.0.0.1" in link
    assert sockets, "found no listening socket at all: the check would pass vacuously"
    assert len({pid for pid, _, _ in sockets}) >= 2  # the scheduler's process and the workers'
    wide = [(pid, ip, port) for pid, ip, port in sockets if not ipaddress.ip_address(ip).is_loopback]
    assert not wide, f"listening beyond loopback: {wide}"
