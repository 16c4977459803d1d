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
    for command in commands:
        if command == "config":
            assert callable(lensdask.config.show)
            continue
        assert callable(getattr(lensdask, command.replace("-", "_"))), command
