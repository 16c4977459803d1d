"""Lens classifiers: timm Vision Transformers, their checkpoint format, training and metrics."""

from ..normalise import DEFAULT_NORMALISATION, normalise
from .architectures import ARCHITECTURES, create_model, describe_architectures
from .checkpoint import (
    check_compatible,
    default_model_dir,
    load_checkpoint,
    read_card,
    resolve_model_dir,
    save_checkpoint,
    untrained_checkpoint,
)
from .committee import build_committee
from .evaluate import evaluate
from .infer import nonfinite_rows, predict_proba, resolve_device
from .inject import inject
from .metrics import (
    auroc,
    binary_metrics,
    completeness_by,
    confusion_matrix,
    roc_curve,
    threshold_at_fpr,
    tpr_at_false_positives,
    tpr_at_fpr,
)
from .pretrained import load_pretrained
from .report import classifier_report, plot_roc
from .train import train

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_NORMALISATION",
    "auroc",
    "binary_metrics",
    "build_committee",
    "check_compatible",
    "classifier_report",
    "completeness_by",
    "confusion_matrix",
    "create_model",
    "default_model_dir",
    "describe_architectures",
    "evaluate",
    "inject",
    "load_checkpoint",
    "load_pretrained",
    "nonfinite_rows",
    "normalise",
    "plot_roc",
    "predict_proba",
    "read_card",
    "resolve_device",
    "resolve_model_dir",
    "roc_curve",
    "save_checkpoint",
    "threshold_at_fpr",
    "tpr_at_false_positives",
    "tpr_at_fpr",
    "train",
    "untrained_checkpoint",
]
