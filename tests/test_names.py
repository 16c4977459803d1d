"""Names across the API: a store is ``store``, the data comes before the model, old keywords still work with a
DeprecationWarning, and an old positional order never runs on swapped inputs."""

from __future__ import annotations

import json
import warnings

import pytest

from lensdask.deprecation import renamed_function, renamed_keywords
from lensdask.errors import StoreNotFoundError
from lensdask.model import evaluate, inject, train


@renamed_keywords(old="new")
def _f(new, other=0):
    return new, other


def test_renamed_keyword_warns_and_names_the_new_one():
    assert _f(1) == (1, 0)
    with pytest.warns(DeprecationWarning, match=r"_f\(old=...\) is deprecated; use new="):
        assert _f(old=2, other=3) == (2, 3)
    with pytest.raises(TypeError, match="'new' twice"):
        _f(1, old=2)
    with pytest.raises(TypeError, match="'new' twice"), warnings.catch_warnings():
        warnings.simplefilter("error")
        _f(new=1, old=2)


def test_renamed_keywords_refuses_an_unknown_parameter():
    with pytest.raises(ValueError, match="no parameter 'nope'"):
        renamed_keywords(old="nope")(_f)


def test_renamed_function_warns_with_the_new_name():
    old = renamed_function(_f, "somewhere.old_f")
    assert old.__name__ == "old_f"
    with pytest.warns(DeprecationWarning, match=r"somewhere.old_f is deprecated; use .*\._f"):
        assert old(5) == (5, 0)


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "model_card.json").write_text(json.dumps({"arch": "x"}))
    return d


@pytest.mark.parametrize("first", ["model_dir", None, "default", "list"])
def test_the_old_model_first_order_is_a_type_error(first, model_dir, tmp_path):
    arg = {"model_dir": model_dir, None: None, "default": "default", "list": [model_dir, model_dir]}[first]
    with pytest.raises(TypeError, match=r"evaluate\(store, model\)"):
        evaluate(arg, tmp_path / "test.zarr", progress=False)
    with pytest.raises(TypeError, match=r"inject\(cutouts, model\)"):
        inject(arg, tmp_path / "cutouts.npz", progress=False)


def test_old_keywords_still_reach_the_store(tmp_path):
    with pytest.warns(DeprecationWarning, match="use store="), pytest.raises(StoreNotFoundError):
        train(data=tmp_path / "missing.zarr", out=tmp_path / "m", progress=False)
    with pytest.warns(DeprecationWarning, match="use store="), pytest.raises(StoreNotFoundError):
        evaluate(data=tmp_path / "missing.zarr", progress=False)
