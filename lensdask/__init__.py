"""lensdask: find strong gravitational lenses in wide-field survey images with Dask.

The public API, one function per CLI command (the data first, then the model, then the output;
a store parameter is called ``store``)::

    simulate(out, n, seed)              lenstronomy lenses and non-lenses -> training store
    mock_survey(out, tiles, per_tile)   DES-like survey store with injected lenses + truth table
    ingest(out, ...)                    real coadd tiles + catalogue, or cutout cubes -> survey store
    train(store, out)                   a timm ViT checkpoint (weights + model card)
    evaluate(store, model)              AUROC, TPR0, TPR10, TPR at FPR 1e-3
    build_committee(store, members, out) a meta-classifier over two or three models -> one model directory
    inject(cutouts, model)              arcs painted on real cutouts: completeness and false-positive rate
    search(store, model, out)           one Dask task per tile -> candidates.parquet
                                        (model=[a, b]: an ensemble; prefilter=(m, 0.1): a cascade)
    fit(run_dir, top=N)                 lens model vs null model for the best candidates -> fits.parquet
    demo(out)                           mock survey -> search -> scored against the truth
    create_store / open_store           the Zarr v3 cutout store
    store_info(store) / convert(src, dst) describe a store (`lensdask info`); rewrite one (`lensdask convert`)
    cluster_client(spec)                a Dask client for 'local', 'slurm', 'htcondor' or 'tcp://...'
    gallery_html(run_dir)               offline HTML gallery of the best candidates (`lensdask review`)
    add_labels / read_labels            the append-only labels table (`lensdask label`)
    trainset_add(labels, store, train_store) labelled survey cutouts -> training store (`lensdask trainset add`)
    export_zooniverse(run_dir, out)     subject images + Panoptes manifest
    swap(votes, gold)                   Space Warps aggregation of volunteer votes
"""

import importlib
import sys
import types
from typing import TYPE_CHECKING

from . import config  # loads the defaults into dask.config
from ._version import __version__

if TYPE_CHECKING:  # what type checkers and IDEs see: the names, as if imported here
    from .cluster import cluster_client
    from .demo import demo
    from .fit import fit
    from .model.committee import build_committee
    from .model.evaluate import evaluate
    from .model.inject import inject
    from .model.train import train
    from .review import add_labels, export_zooniverse, gallery_html, read_labels, trainset_add
    from .review.swap import swap
    from .search import SearchResult, merge, search, search_tile
    from .simulate import simulate
    from .store import CutoutStore, create_store, open_store
    from .storeadmin import convert, store_info
    from .survey import mock_survey
    from .survey.ingest import ingest

_HOMES = {
    "CutoutStore": "store",
    "SearchResult": "search",
    "add_labels": "review",
    "build_committee": "model",
    "cluster_client": "cluster",
    "convert": "storeadmin",
    "create_store": "store",
    "demo": "demo",
    "evaluate": "model",
    "export_zooniverse": "review",
    "fit": "fit",
    "gallery": "review",  # the deprecated name of gallery_html; not in __all__
    "gallery_html": "review",
    "ingest": "survey",
    "inject": "model",
    "merge": "search",
    "mock_survey": "survey",
    "open_store": "store",
    "read_labels": "review",
    "search": "search",
    "search_tile": "search",
    "simulate": "simulate",
    "store_info": "storeadmin",
    "swap": "review",
    "train": "model",
    "trainset_add": "review",
}
"""Where each public name lives: imported on first use, so that a process that needs only part
of lensdask (an ingest worker: no PyTorch, ~0.65 GiB less) does not load the rest."""


def __getattr__(name: str):
    """Import a public name's subpackage on first use (PEP 562) and bind the name here."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'lensdask' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Face(types.ModuleType):
    """The package module: ``lensdask.simulate``, ``lensdask.search`` and ``lensdask.demo`` stay the
    functions when their subpackages are imported. (The import system binds a subpackage to its
    parent once it is loaded; here that binding is dropped for the names a function holds.)"""

    def __setattr__(self, name: str, value) -> None:
        if name in _HOMES and isinstance(value, types.ModuleType) and value.__name__ == f"{__name__}.{name}":
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Face

__all__ = [
    "CutoutStore",
    "SearchResult",
    "add_labels",
    "export_zooniverse",
    "gallery_html",
    "read_labels",
    "swap",
    "trainset_add",
    "__version__",
    "build_committee",
    "cluster_client",
    "config",
    "convert",
    "create_store",
    "demo",
    "evaluate",
    "fit",
    "ingest",
    "inject",
    "merge",
    "mock_survey",
    "open_store",
    "search",
    "search_tile",
    "simulate",
    "store_info",
    "train",
]
