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
    }
    for command in commands:
        obj = lensdask
        for part in named.get(command, command.replace("-", "_")).split("."):
            obj = getattr(obj, part)
        assert callable(obj), command
