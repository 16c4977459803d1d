"""The one place that turns a cluster specification into a Dask client.

Only the CLI and notebooks create clusters; library functions take a ``client=``
or use the current one (:func:`current_client`).
"""

from __future__ import annotations

import contextlib
import logging

from . import config
from .errors import ClusterError

SPECS = "'local' or a scheduler address 'tcp://HOST:PORT'"


def current_client():
    """The active ``distributed.Client``, or None when there is none."""
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None


@contextlib.contextmanager
def cluster_client(spec: str | None = "local", *, quiet: bool = False):
    """Open a Dask client for ``spec`` and close what was opened on exit.

    Parameters
    ----------
    spec : str, optional
        ``"local"`` (default): a ``LocalCluster`` from the ``lensdask.cluster``
        configuration. ``"tcp://HOST:PORT"``: connect to a running scheduler.
    quiet : bool
        Do not print the dashboard link.

    Yields
    ------
    distributed.Client
    """
    from distributed import Client, LocalCluster

    spec = spec or "local"
    if spec == "local":
        cfg = config.effective()["cluster"]
        # LocalCluster logs a warning when the preferred dashboard port is taken; it then picks another.
        logging.getLogger("distributed.node").setLevel(logging.ERROR)
        with LocalCluster(
            n_workers=int(cfg["n_workers"]),
            threads_per_worker=int(cfg["threads_per_worker"]),
            dashboard_address=cfg["dashboard_address"],
            memory_limit=cfg["memory_limit"],
            processes=True,
        ) as cluster, Client(cluster) as client:
            if not quiet:
                print(f"Dask dashboard: {client.dashboard_link}", flush=True)
            yield client
        return
    if spec.startswith(("tcp://", "tls://", "ucx://", "inproc://")):
        try:
            client = Client(spec, timeout="30s")
        except (OSError, ValueError) as exc:
            raise ClusterError(f"cannot reach the Dask scheduler at {spec}: {exc}") from exc
        try:
            if not quiet:
                print(f"Dask dashboard: {client.dashboard_link}", flush=True)
            yield client
        finally:
            client.close()
        return
    raise ClusterError(f"unknown cluster {spec!r}: use {SPECS}")
