"""Names across the API: a store is ``store``, the data comes before the model, old keywords still work with a
DeprecationWarning, and an old positional order never runs on swapped inputs."""

from __future__ import annotations

import importlib
import json
import warnings

import pytest

from lensdask.deprecation import renamed_function, renamed_keywords
from lensdask.errors import StoreNotFoundError
from lensdask.model import evaluate, inject, train
from lensdask.search import search_tile


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
    with pytest.warns(DeprecationWarning, match="use store="), pytest.raises(StoreNotFoundError):
        search_tile(zarr=str(tmp_path / "missing.zarr"), tile=0, model_dir="m", sha256="0", run_dir=str(tmp_path))


def test_the_two_galleries_say_what_they_make_and_the_old_name_warns():
    import lensdask
    from lensdask.review import gallery_html
    from lensdask.simulate import gallery_png

    assert "gallery_html" in lensdask.__all__ and "gallery" not in lensdask.__all__
    assert lensdask.gallery_html is gallery_html
    with pytest.warns(DeprecationWarning, match="use lensdask.review.gallery.gallery_html"), pytest.raises(Exception):  # noqa: B017 (no run there: only the warning matters)
        lensdask.gallery("no-such-run")
    with pytest.warns(DeprecationWarning, match="use lensdask.simulate.gallery.gallery_png"), pytest.raises(Exception):  # noqa: B017
        importlib.import_module("lensdask.simulate.gallery").gallery(None, None, "x.png")
    assert callable(gallery_png)


def test_trainset_add_old_keywords(tmp_path):
    from lensdask.review import trainset_add

    with pytest.warns(DeprecationWarning) as rec, pytest.raises(Exception):  # noqa: B017
        trainset_add(tmp_path / "no-labels.csv", zarr=tmp_path / "s.zarr", to=tmp_path / "t.zarr")
    assert {str(w.message) for w in rec} >= {
        "trainset_add(zarr=...) is deprecated; use store=",
        "trainset_add(to=...) is deprecated; use train_store=",
    }
