"""A notebook widget to label candidates one at a time, with buttons or the keyboard.

Labels go through :func:`lensdask.review.labels.add_labels` to the same
append-only table the CLI writes. Needs ``ipywidgets`` (extra ``notebooks``).
"""

from __future__ import annotations

import os
import pathlib

from ..deprecation import renamed_keywords
from ..images import png_bytes, view_image
from ..rundir import best_candidates
from .labels import add_labels, review_classes


class LabelWidget:
    """Step through the best candidates of a run and label each with a class.

    Parameters
    ----------
    run_dir : str or path
        Search run directory.
    labels : str or path
        The labels CSV to append to.
    top : int
        How many candidates to review, best first.
    labeller : str, optional
        Name written with every label.
    classes : sequence of str, optional
        Buttons offered (config ``review.classes``).

    Notes
    -----
    Keys: the digits ``1``… pick the class with that number (type in the box and
    press Enter), ``s`` skips, ``b`` goes back. ``display(widget.box)`` or just
    leave the widget as a cell's last expression.
    """

    @renamed_keywords(zarr="store")
    def __init__(self, run_dir, labels, *, top: int = 50, labeller: str | None = None, classes=None, store=None):
        import ipywidgets as w

        self.run_dir = pathlib.Path(run_dir)
        self.labels = pathlib.Path(labels)
        self.labeller = labeller or os.environ.get("USER") or "unknown"
        self.classes = review_classes(classes)
        self.candidates, self.store, self.stamps = best_candidates(self.run_dir, top, store=store)
        self.position = 0
        self.image = w.Image(format="png", width=270, height=270)
        self.info = w.HTML()
        self.buttons = [w.Button(description=f"{k + 1} {c}") for k, c in enumerate(self.classes)]
        for k, b in enumerate(self.buttons):
            b.on_click(lambda _b, k=k: self.label(self.classes[k]))
        skip, back = w.Button(description="skip (s)"), w.Button(description="back (b)")
        skip.on_click(lambda _b: self.move(+1))
        back.on_click(lambda _b: self.move(-1))
        self.keys = w.Text(placeholder="key + Enter: 1-9, s, b", continuous_update=False)
        self.keys.observe(self._on_key, names="value")
        self.box = w.VBox([w.HBox([self.image, self.info]), w.HBox(self.buttons), w.HBox([back, skip, self.keys])])
        self._show()

    def _ipython_display_(self):  # pragma: no cover - needs a notebook front end
        from IPython.display import display

        display(self.box)

    def _show(self) -> None:
        if self.position >= len(self.candidates):
            self.info.value = f"<b>done</b>: {len(self.candidates)} candidates reviewed; labels in {self.labels}"
            return
        row = self.candidates.iloc[self.position]
        self.image.value = png_bytes(
            view_image(self.stamps[self.position], self.store.bands, "colour", pixel_scale=self.store.pixel_scale),
            scale=6,
        )
        self.info.value = (
            f"<b>{self.position + 1} / {len(self.candidates)}</b><br>tile {row['tile']}<br>"
            f"object {int(row['object_id'])}<br>score {row['score']:.4f}"
        )

    def move(self, step: int) -> None:
        """Go ``step`` candidates forward (or back) without labelling."""
        self.position = min(max(self.position + step, 0), len(self.candidates))
        self._show()

    def label(self, cls: str) -> None:
        """Label the current candidate ``cls``, append it to the table and show the next."""
        if self.position >= len(self.candidates):
            return
        row = self.candidates.iloc[self.position]
        add_labels(
            self.labels,
            [{"tile": row["tile"], "object_id": int(row["object_id"]), "class": cls}],
            labeller=self.labeller,
            classes=self.classes,
        )
        self.move(+1)

    def _on_key(self, change) -> None:
        key = str(change["new"]).strip().lower()
        if not key:
            return
        if key.isdigit() and 1 <= int(key) <= len(self.classes):
            self.label(self.classes[int(key) - 1])
        elif key == "s":
            self.move(+1)
        elif key == "b":
            self.move(-1)
        self.keys.value = ""
