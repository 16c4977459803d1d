"""The worker setup plugin: applied once per worker, one model cache per worker, emptied on teardown."""

from __future__ import annotations

import pickle

import dask
import pytest
from distributed import Client, LocalCluster

from lensdask import workersetup
from lensdask.cluster import cluster_client
from lensdask.fanout import run_tiles
from lensdask.model.checkpoint import read_card
from lensdask.search.worker import get_model, load_counts, loaded_models
from lensdask.workersetup import PLUGIN_NAME, WorkerSetup, current_setup, register


@pytest.fixture
def threaded_cluster():
    """Two workers in this process (``processes=False``), so their plugins can be inspected directly."""
    with (
        LocalCluster(n_workers=2, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        yield cluster, client


def _plugins(cluster) -> dict:
    return {w.address: w.plugins.get(PLUGIN_NAME) for w in cluster.workers.values()}


def _cached_object(key):
    return current_setup().cached(key, object)


def _setup_of_task():
    return current_setup()


def test_setup_runs_once_per_worker_and_on_workers_that_join_later(threaded_cluster):
    cluster, client = threaded_cluster
    register(client)
    plugins = _plugins(cluster)
    register(client)  # again (another run on the same client): idempotent, every worker keeps its instance
    assert _plugins(cluster) == plugins
    assert len(plugins) == 2 and all(isinstance(p, WorkerSetup) for p in plugins.values())
    assert len({id(p) for p in plugins.values()}) == 2  # each worker has its own instance, and cache
    assert [p.setups for p in plugins.values()] == [1, 1]
    expected = {"malloc_tuned": workersetup.tune_malloc(), "threads": workersetup.limit_threads()}
    assert all(p.applied == expected for p in plugins.values())
    cluster.scale(3)
    client.wait_for_workers(3, timeout=30)
    assert [p.setups for p in _plugins(cluster).values()] == [1, 1, 1]


def test_model_cache_is_per_worker_reused_and_emptied_on_teardown(threaded_cluster):
    cluster, client = threaded_cluster
    register(client)
    futures = client.map(_cached_object, ["model-a"] * 8, pure=False)
    values = client.gather(futures)
    plugins = _plugins(cluster)
    counts = [p.load_counts().get("model-a", 0) for p in plugins.values()]
    assert all(n <= 1 for n in counts) and sum(counts) >= 1  # loaded once on every worker that needed it
    held = {id(p.cached("model-a", list)) for p in plugins.values() if p.cached_keys()}
    assert {id(v) for v in values} == held  # every task got its worker's one copy
    client.unregister_worker_plugin(PLUGIN_NAME)  # teardown on every worker
    assert all(p.cached_keys() == [] for p in plugins.values())


def test_tasks_use_their_workers_plugin_else_the_process_setup(threaded_cluster):
    cluster, client = threaded_cluster
    # a client that never registered the plugin: tasks fall back to this process's setup
    assert client.submit(_setup_of_task, pure=False).result() is current_setup()
    register(client)
    assert client.submit(_setup_of_task, pure=False).result() in set(_plugins(cluster).values())


def test_search_models_are_loaded_once_per_worker(threaded_cluster, random_model):
    cluster, client = threaded_cluster
    register(client)
    sha = read_card(random_model)["sha256"]
    futures = client.map(lambda _: get_model(str(random_model), sha, "cpu")[0], range(6), pure=False)
    models = client.gather(futures)
    assert len({id(m) for m in models}) <= 2  # at most one model per worker
    counts = client.run(load_counts)
    assert all(n.get(sha, 0) <= 1 for n in counts.values()) and sum(n.get(sha, 0) for n in counts.values()) >= 1
    assert any((sha, "cpu") in keys for keys in client.run(loaded_models).values())


def test_in_process_setup_is_applied_once():
    first = current_setup()
    assert current_setup() is first and first.setups == 1
    # the thread count is whatever OMP_NUM_THREADS said when the process was first set up
    # (earlier tests may have set it since); malloc tuning is once per process
    assert set(first.applied) == {"malloc_tuned", "threads"}
    assert first.applied["malloc_tuned"] == workersetup.tune_malloc()
    one = first.cached(("in-process", "cpu"), object)
    assert first.cached(("in-process", "cpu"), object) is one
    assert first.load_counts()[("in-process", "cpu")] == 1


def test_this_process_keeps_its_thread_count_whatever_omp_num_threads_says(monkeypatch):
    """Outside a worker the user's thread counts stand: a LocalCluster started in this process
    leaves its workers' OMP_NUM_THREADS=1 in os.environ (the nanny sets it before spawning), and
    following it would train in the notebook on one core."""
    import torch

    now = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", str(now + 1))
    own = WorkerSetup(follow_environment=False)
    own.setup()
    assert own.applied["threads"] is None and torch.get_num_threads() == now
    assert current_setup().follow_environment is False  # the setup tiles get outside any worker
    assert pickle.loads(pickle.dumps(own)).follow_environment is False
    assert WorkerSetup(threads=now).follow_environment is True  # a worker's follows its environment


def test_only_the_configuration_travels_to_the_workers():
    plugin = WorkerSetup(threads=3)
    plugin.setups = 1
    plugin.cached("model", object)
    copy = pickle.loads(pickle.dumps(plugin))
    assert copy.threads == 3 and copy.setups == 0 and copy.cached_keys() == []


def test_threads_follow_omp_num_threads(monkeypatch):
    import torch

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert workersetup.environment_threads() is None and workersetup.limit_threads() is None
    monkeypatch.setenv("OMP_NUM_THREADS", "not a number")
    assert workersetup.limit_threads() is None
    now = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", str(now))
    assert workersetup.limit_threads() == now and torch.get_num_threads() == now
    with pytest.raises(ValueError, match="at least 1"):
        workersetup.limit_threads(0)


def _tile_setups():
    """What a tile task sees: the setup object's kind and how often it was applied."""
    setup = current_setup()
    return type(setup).__name__, setup.setups


def test_a_fan_out_on_a_cluster_client_registers_the_setup_on_every_worker(threaded_cluster):
    cluster, _ = threaded_cluster
    # an existing scheduler, by address: the fan-out registers the plugin before its tiles
    with cluster_client(cluster.scheduler_address, quiet=True) as client:
        results, failures = run_tiles(
            [("t0", _tile_setups, (), {}), ("t1", _tile_setups, (), {})], client=client, progress=False
        )
        assert failures == [] and set(results.values()) == {("WorkerSetup", 1)}
        setups = client.run(lambda dask_worker: dask_worker.plugins[PLUGIN_NAME].setups)
        assert sorted(setups.values()) == [1, 1]
        assert all(isinstance(p, WorkerSetup) and p.setups == 1 for p in _plugins(cluster).values())


def test_local_cluster_workers_are_set_up_in_their_first_task_without_registering():
    with (
        dask.config.set(
            {
                "lensdask.cluster.n_workers": 1,
                "lensdask.cluster.threads_per_worker": 1,
                "lensdask.cluster.dashboard_address": ":0",
            }
        ),
        cluster_client("local", quiet=True) as client,
    ):
        assert client.run(lambda dask_worker: PLUGIN_NAME in dask_worker.plugins) == {
            w: False for w in client.scheduler_info()["workers"]
        }  # nothing sent before there is work
        results, failures = run_tiles(
            [("a", _tile_setups, (), {}), ("b", _tile_setups, (), {})],
            client=client,
            progress=False,
            register_setup=False,
        )
        applied = client.run(lambda dask_worker: workersetup.current_setup(dask_worker).applied)
    assert failures == [] and list(results.values()) == [("WorkerSetup", 1)] * 2  # once per worker process
    # a nanny's worker: OMP_NUM_THREADS=1 from distributed.nanny.pre-spawn-environ
    assert [a["threads"] for a in applied.values()] == [1]
