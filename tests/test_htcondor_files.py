"""The HTCondor files of ``lensdask search --emit-htcondor`` (tiles, merge, fit) parse with the real HTCondor
Python bindings.

No pool is needed: ``htcondor2.Submit`` parses a submit description as ``condor_submit`` does (and
raises on a malformed line); the DAG is checked line by line against DAGMan's grammar for the
commands it uses, and rebuilt with ``htcondor2.dags`` to compare the graph.
"""

from __future__ import annotations

import re
import shlex

import pytest

from lensdask.cluster import emit_htcondor_search

htcondor2 = pytest.importorskip("htcondor2", reason="the HTCondor Python bindings (pip install htcondor) are absent")

TILES = [(0, "DES0330-3040"), (1, "DES0333-3040"), (2, "odd name,with comma")]


@pytest.fixture(params=["htcondor", "htcondor-gpu"])
def emitted(request, tmp_path):
    files = emit_htcondor_search(
        tmp_path / "condor",
        store="/data/des.zarr",
        model_dir=["/models/a", "/models/b b"],
        run_dir="/runs/r1",
        tiles=TILES,
        threshold=0.5,
        floor=0.1,
        batch_size="auto",
        device="cuda",
        spec=request.param,
        combine="rank",
        prefilter=("/models/pre", 0.2),
        prefilter_threshold=0.4,
        fit_top=25,
    )
    return files


def _submit(path) -> htcondor2.Submit:
    return htcondor2.Submit(path.read_text())


def _arguments(sub) -> list[str]:
    """The new-syntax (double-quoted) arguments, split as condor_submit splits them."""
    value = sub["arguments"]
    assert value.startswith('"') and value.endswith('"') and value.count('"') % 2 == 0, value
    return shlex.split(value[1:-1])


def test_search_submit_file_parses(emitted, monkeypatch):
    sub = _submit(emitted["search.sub"])
    assert sub["universe"] == "vanilla"
    assert int(sub["request_cpus"]) >= 1 and int(sub["request_memory"]) > 0 and int(sub["request_disk"]) > 0
    assert sub.getQArgs() == "tile,name from tiles.txt"
    args = _arguments(sub)
    assert args[:3] == ["-m", "lensdask.cli", "search-tile"]
    assert args[args.index("--tile") + 1] == "$(tile)" and args[args.index("--floor") + 1] == "0.1"
    assert [args[i + 1] for i, a in enumerate(args) if a == "--model"] == ["/models/a", "/models/b b"]
    # the queue statement's item data, read by the bindings from tiles.txt beside the submit file
    monkeypatch.chdir(emitted["search.sub"].parent)
    items = list(sub.itemdata())
    assert [int(i["tile"]) for i in items] == [i for i, _ in TILES]
    assert all(re.fullmatch(r"[A-Za-z0-9._+%-]+", i["name"]) for i in items)  # safe in log file names
    assert items[0]["name"] == "DES0330-3040"


def test_merge_submit_file_parses(emitted):
    sub = _submit(emitted["merge.sub"])
    assert sub["universe"] == "local" and sub.getQArgs() == ""
    assert _arguments(sub)[:4] == ["-m", "lensdask.cli", "merge", "/runs/r1"]


def test_fit_submit_file_parses_and_its_arguments_are_lensdask_fit(emitted):
    from lensdask.cli import _cmd_fit, build_parser

    sub = _submit(emitted["fit.sub"])
    assert sub["universe"] == "vanilla" and sub.getQArgs() == ""
    assert "request_gpus" not in sub.keys()  # the fit runs on CPUs, even after a GPU search
    assert int(sub["request_cpus"]) >= 1 and int(sub["request_memory"]) > 0
    assert sub["MY.SingularityImage"].startswith('"/cvmfs/') and int(sub["max_retries"]) == 2
    assert "ExitCode == 2" in sub["retry_until"]  # bad input is not retried
    env = sub["environment"].strip('"').split()
    assert "OMP_NUM_THREADS=1" in env and f"DASK_LENSDASK__CLUSTER__N_WORKERS={sub['request_cpus']}" in env
    args = _arguments(sub)
    assert args[:4] == ["-m", "lensdask.cli", "fit", "/runs/r1"]
    parsed = build_parser().parse_args(args[2:])
    assert parsed.func is _cmd_fit and parsed.run_dir == "/runs/r1" and parsed.top == 25


def test_fit_top_follows_the_config_and_without_the_fit_stage_the_dag_ends_with_the_merge(tmp_path):
    from lensdask import config
    from lensdask.cli import build_parser

    folder = tmp_path / "condor"
    common = dict(
        store="/data/des.zarr",
        model_dir="/models/a",
        run_dir="/runs/r1",
        tiles=TILES,
        threshold=0.5,
        floor=0.1,
        batch_size=64,
        device="cpu",
    )
    files = emit_htcondor_search(folder, **common)
    args = _arguments(_submit(files["fit.sub"]))
    assert build_parser().parse_args(args[2:]).top == int(config.get("fit.top"))
    files = emit_htcondor_search(folder, **common, fit=False)  # again, over the same folder
    assert "fit.sub" not in files and not (folder / "fit.sub").exists()  # no stale fit.sub left
    assert _parse_dag(files["search.dag"].read_text()) == (
        {"tiles": "search.sub", "merge": "merge.sub"},
        [("tiles", "merge")],
    )


def test_a_malformed_submit_file_is_refused_by_the_bindings():
    with pytest.raises(ValueError):  # "executable /bin/true" has no "="
        htcondor2.Submit("universe = vanilla\nexecutable /bin/true\nqueue\n")


DAG_LINE = re.compile(
    r"^(?:JOB\s+(?P<job>\S+)\s+(?P<file>\S+)(?:\s+DIR\s+\S+)?(?:\s+NOOP)?(?:\s+DONE)?"
    r"|PARENT\s+(?P<parents>\S+(?:\s+\S+)*?)\s+CHILD\s+(?P<children>\S+(?:\s+\S+)*))\s*$"
)


def _parse_dag(text: str):
    jobs, edges = {}, []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = DAG_LINE.match(line)
        assert m, f"line {n} of the DAG is not a JOB or PARENT ... CHILD command: {line!r}"
        if m["job"]:
            assert m["job"] not in jobs, f"node {m['job']} defined twice"
            jobs[m["job"]] = m["file"]
        else:
            edges += [(p, c) for p in m["parents"].split() for c in m["children"].split()]
    for p, c in edges:
        assert p in jobs and c in jobs, f"edge {p} -> {c} names an undefined node"
    return jobs, edges


def test_dag_is_valid_dagman_and_builds_with_htcondor_dags(emitted, tmp_path):
    dags = pytest.importorskip("htcondor2.dags")
    jobs, edges = _parse_dag(emitted["search.dag"].read_text())
    assert jobs == {"tiles": "search.sub", "merge": "merge.sub", "fit": "fit.sub"}
    assert edges == [("tiles", "merge"), ("merge", "fit")]
    for file in jobs.values():  # every node's submit file is beside the DAG and parses
        _submit(emitted["search.dag"].parent / file)
    # the same graph, built and written by the bindings' DAG writer, has the same nodes and edge
    dag = dags.DAG()
    layers = {
        name: dag.layer(name=name, submit_description=_submit(emitted["search.dag"].parent / file))
        for name, file in jobs.items()
    }
    for p, c in edges:
        layers[p].add_children(layers[c])
    out = dags.write_dag(dag, tmp_path / "rebuilt")
    rebuilt_jobs, rebuilt_edges = _parse_dag(
        "\n".join(ln for ln in out.read_text().splitlines() if ln.split(maxsplit=1)[:1] in (["JOB"], ["PARENT"]))
    )
    layer = lambda node: node.rsplit(":", 1)[0]  # noqa: E731 - the writer names a layer's nodes LAYER:INDEX
    assert {layer(n) for n in rebuilt_jobs} == set(jobs)
    assert [(layer(p), layer(c)) for p, c in rebuilt_edges] == edges


@pytest.mark.parametrize(
    "bad",
    [
        "JOB tiles\n",
        "JOB tiles search.sub\nPARENT tiles CHILD nowhere\n",
        "JOBS tiles search.sub\n",
        "JOB a a.sub\nJOB a b.sub\n",
    ],
)
def test_the_dag_check_rejects_malformed_dags(bad):
    with pytest.raises(AssertionError):
        _parse_dag(bad)
