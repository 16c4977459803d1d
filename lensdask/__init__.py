"""lensdask: find strong gravitational lenses in wide-field survey images with Dask.

The public API, one function per CLI command (the data first, then the model, then the output;
a store parameter is called ``store``)::

    simulate(out, n, seed)              lenstronomy lenses and non-lenses -> training store
    mock_survey(out, tiles, per_tile)   DES-like survey store with injected lenses + truth table
    ingest(out, ...)                    real coadd tiles + catalogue, or cutout cubes -> survey store
    train(store, out)                   a timm ViT checkpoint (weights + model card)
    evaluate(store, model)              AUROC, TPR0, TPR10, TPR at FPR 1e-3
    inject(cutouts, model)              arcs painted on real cutouts: completeness and false-positive rate
    search(store, model, out)           one Dask task per tile -> candidates.parquet
                                        (model=[a, b]: an ensemble; prefilter=(m, 0.1): a cascade)
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

# The functions are bound after their subpackages are imported, so that
# ``lensdask.simulate`` and ``lensdask.search`` name the functions, not the subpackages.
from . import config  # noqa: E402  (loads the defaults into dask.config)
from ._version import __version__  # noqa: E402
from .cluster import cluster_client  # noqa: E402
from .demo import demo  # noqa: E402
from .model import evaluate, inject, train  # noqa: E402
from .review import add_labels, export_zooniverse, gallery_html, read_labels, swap, trainset_add  # noqa: E402
from .review import gallery as gallery  # noqa: E402  (the deprecated name of gallery_html; not in __all__)
from .search import SearchResult, merge, search, search_tile  # noqa: E402
from .simulate import simulate  # noqa: E402
from .store import CutoutStore, create_store, open_store  # noqa: E402
from .storeadmin import convert, store_info  # noqa: E402
from .survey import ingest, mock_survey  # noqa: E402

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
    "cluster_client",
    "config",
    "convert",
    "create_store",
    "demo",
    "evaluate",
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
