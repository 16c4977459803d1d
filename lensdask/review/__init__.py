"""Review of search results: galleries, the review app (``review.app.serve``), labels and votes, feedback into
training, known lenses, Zooniverse."""

from ..crossmatch import crossmatch, known_lens_report, known_lenses
from .gallery import Gallery, gallery_html
from .gallery import gallery as gallery  # the deprecated name of gallery_html
from .labels import add_labels, consensus, label_conflicts, read_labels, votes
from .loop import labels_from_truth, purity_at_top, review_round
from .swap import read_classifications, swap, volunteer_skills
from .trainset import trainset_add
from .zooniverse import export_zooniverse

__all__ = [
    "Gallery",
    "add_labels",
    "consensus",
    "crossmatch",
    "export_zooniverse",
    "gallery_html",
    "known_lens_report",
    "known_lenses",
    "label_conflicts",
    "labels_from_truth",
    "purity_at_top",
    "read_classifications",
    "read_labels",
    "review_round",
    "swap",
    "trainset_add",
    "volunteer_skills",
    "votes",
]
