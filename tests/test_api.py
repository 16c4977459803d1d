"""The public API: every name resolves, and the CLI commands map to functions of the same name."""

import importlib

import lensdask


def test_public_names_resolve():
    for name in lensdask.__all__:
        assert getattr(lensdask, name) is not None


def test_each_command_is_a_function_of_the_same_name():
    from lensdask.cli import build_parser

    # importing the subpackages again must not replace the functions by modules
    for sub in ("lensdask.simulate.run", "lensdask.search.run", "lensdask.demo", "lensdask.survey.mock"):
        importlib.import_module(sub)
    commands = build_parser()._subparsers._group_actions[0].choices
    # commands whose function has a more telling name than the verb
    named = {
        "config": "config.show",
        "review": "gallery_html",
        "label": "add_labels",
        "trainset": "trainset_add",
        "info": "store_info",
        "committee": "build_committee",
    }
    for command in commands:
        obj = lensdask
        for part in named.get(command, command.replace("-", "_")).split("."):
            obj = getattr(obj, part)
        assert callable(obj), command


def _fresh_python(code: str) -> str:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_worker_that_only_ingests_never_loads_pytorch():
    # what an ingest task unpickles on a batch worker: its module, not the whole package
    out = _fresh_python(
        "import sys, lensdask.survey.ingest, lensdask.store, lensdask.fanout\n"
        "print(sorted(m for m in ('torch', 'timm', 'lenstronomy') if m in sys.modules))"
    )
    assert out.strip() == "[]"


def test_subpackages_imported_first_leave_the_functions_their_names():
    # a fresh process where the subpackages load before the face binds anything
    out = _fresh_python(
        "import lensdask.search.run, lensdask.simulate.run, lensdask.demo, lensdask.review.loop\n"
        "import lensdask\n"
        "from lensdask.search import run\n"
        "print([type(getattr(lensdask, n)).__name__ for n in ('search', 'simulate', 'demo', 'train', 'model')])\n"
        "print(lensdask.search is run.search, sorted(set(lensdask.__all__) - set(dir(lensdask))))"
    )
    assert out.split("\n")[:2] == ["['function', 'function', 'function', 'function', 'module']", "True []"]
