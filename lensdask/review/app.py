"""The review app: ``lensdask review RUN --serve`` — grade candidates from the keyboard, straight into the labels.

A small Tornado application (Tornado is already installed with ``distributed``) bound to 127.0.0.1
only. It serves one page (the same page as the offline gallery, :mod:`lensdask.review.page`, in
``app`` mode), the candidates' pictures by candidate number and view name (``fit-model``: the model
panel of a candidate fitted by ``lensdask fit``), and a JSON API:

``GET api/grades?labeller=NAME``
    That reviewer's latest grade of each shown candidate, and how many grades others gave.
``POST api/grade``  ``{"index", "class", "grade", "labeller"}``
    Appends one row to the labels table at once (:func:`lensdask.review.labels.add_labels`, which
    holds a file lock): several reviewers, in one app or several, never overwrite each other.

Nothing else is served: a path that is not one of these is answered 404, one that tries to leave
the run (``..``) 403. The page carries a per-app token that every API call must send back in a
header, and the ``Host`` must be this machine, so other web pages open in the same browser cannot
post grades (cross-site requests, DNS rebinding).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import pathlib
import secrets
import threading
import urllib.parse

import numpy as np

from .. import config
from ..deprecation import renamed_keywords
from ..errors import LensdaskError
from ..fit.models import PANEL_VIEW, candidate_models
from ..images import VIEWS, sky_noise
from ..names import is_valid_name
from ..rundir import best_candidates
from .gallery import n_candidates, render_cards, run_summary
from .labels import add_labels, latest_grades, read_labels, review_classes
from .page import candidate_images, document, grade_keys, header_meta


class ReviewState:
    """What the app serves: the best ``top`` candidates of a run, their pictures, the labels table.

    Parameters
    ----------
    run_dir : str or path
        A search run directory.
    labels : str or path, optional
        The labels CSV grades are appended to (default ``RUN_DIR/labels.csv``).
    top : int
        Candidates shown, best score first.
    labeller : str, optional
        The reviewer name the page starts with (default ``$USER``); each reviewer can type theirs.
    store : str or path, optional
        The survey store, if it moved since the search (``zarr=`` is its deprecated old name).

    Raises
    ------
    LensdaskError
        The run has no candidates: there is nothing to review, and nothing is served.
    """

    @renamed_keywords(zarr="store")
    def __init__(self, run_dir, labels=None, *, top: int = 100, labeller: str | None = None, store=None):
        self.run_dir = pathlib.Path(run_dir)
        self.labels = pathlib.Path(labels) if labels is not None else self.run_dir / "labels.csv"
        self.cand, self.store, self.stamps = best_candidates(self.run_dir, top, store=store)
        if self.cand.empty:
            raise LensdaskError(
                f"{self.run_dir} has no candidates above its threshold: nothing to review "
                "(lower --threshold in lensdask merge, or search more tiles)"
            )
        self.labeller = labeller or os.environ.get("USER") or ""
        self.classes = review_classes()
        self.keys = grade_keys(self.classes)
        self.token = secrets.token_urlsafe(24)
        self.noise = sky_noise(self.stamps, self.store.bands)
        self.models = candidate_models(self.run_dir, self.cand, self.stamps.shape[1:])
        """Per shown candidate, its lens-model fit's arrays (None when not fitted): its model panel."""
        self._images: dict[int, dict[str, bytes]] = {}
        self._lock = threading.Lock()
        self.names = set(VIEWS) | {f"band-{b}" for b in self.store.bands} | {PANEL_VIEW}

    def page(self) -> str:
        """The review page (cards link their pictures as ``img/<index>/<view>.png``)."""
        summary = run_summary(self.run_dir)
        meta = header_meta(summary, len(self.cand), n_candidates(self.run_dir, len(self.cand)))
        meta += f" · labels → {self.labels.name}"
        cards = render_cards(
            self.cand,
            self.stamps,
            self.store,
            src=lambda i, name: f"img/{i}/{urllib.parse.quote(name)}.png",
            models=self.models,
        )
        return document(
            title="lensdask review",
            run=self.run_dir.name,
            meta=meta,
            cards=cards,
            keys=self.keys,
            mode="app",
            storage_key="",
            labeller=self.labeller,
            token=self.token,
            total=len(self.cand),
        )

    def image(self, index: int, name: str) -> bytes | None:
        """PNG bytes of one picture, or None when there is no such candidate or view (the model panel
        of a candidate without a fit included)."""
        if not 0 <= index < len(self.cand) or name not in self.names:
            return None
        if name == PANEL_VIEW and self.models[index] is None:
            return None
        with self._lock:
            if index not in self._images:
                self._images[index] = candidate_images(
                    self.stamps[index],
                    self.store.bands,
                    self.store.pixel_scale,
                    self.noise,
                    self.cand.iloc[index],
                    self.models[index],
                )
            return self._images[index][name]

    def grades(self, labeller: str) -> dict:
        """``{"tile/object_id": {class, grade, labeller, time}}`` for ``labeller``, and others' counts."""
        table = read_labels(self.labels)
        shown = set(zip(self.cand["tile"].astype(str), self.cand["object_id"].astype(np.int64)))
        if not table.empty:
            table = table[[k in shown for k in zip(table["tile"].astype(str), table["object_id"].astype(np.int64))]]
        mine = latest_grades(table, labeller) if labeller else table.iloc[0:0]
        others = latest_grades(table[table["labeller"] != labeller]) if not table.empty else table
        keys = ("tile", "object_id", "class", "grade", "labeller", "time")
        out = {
            f"{r['tile']}/{int(r['object_id'])}": {k: (int(r[k]) if k == "object_id" else r[k]) for k in keys}
            for r in mine.to_dict("records")
        }
        counts = (
            {}
            if others.empty
            else {f"{t}/{int(o)}": int(n) for (t, o), n in others.groupby(["tile", "object_id"]).size().items()}
        )
        return {"grades": out, "others": counts}

    def grade(self, body: dict) -> dict:
        """Append one grade (``index``, ``class``, ``grade``, ``labeller``) to the labels table."""
        try:
            index = int(body["index"])
            cls, grade, who = str(body["class"]), str(body.get("grade", "")), str(body["labeller"]).strip()
        except (KeyError, TypeError, ValueError) as exc:
            raise LensdaskError(f"a grade needs index, class, grade and labeller ({exc})") from None
        if not 0 <= index < len(self.cand):
            raise LensdaskError(f"no candidate {index}")
        if not is_valid_name(who):
            raise LensdaskError(
                "reviewer names are 1-128 letters, digits and . _ + - (starting with a letter or digit)"
            )
        row = self.cand.iloc[index]
        added = add_labels(
            self.labels,
            [{"tile": str(row["tile"]), "object_id": int(row["object_id"]), "class": cls, "grade": grade}],
            labeller=who,
            classes=self.classes,
        )
        return added.iloc[0].to_dict() | {"object_id": int(added.iloc[0]["object_id"])}


def _application(state: ReviewState, port: int):
    import tornado.web

    allowed_hosts = {f"127.0.0.1:{port}", f"localhost:{port}"}

    class Base(tornado.web.RequestHandler):
        def prepare(self):
            if self.request.host not in allowed_hosts:
                raise tornado.web.HTTPError(403, "unknown Host")
            if ".." in urllib.parse.unquote(self.request.path).split("/"):
                raise tornado.web.HTTPError(403, "outside the run")

        def set_default_headers(self):
            self.set_header("Cache-Control", "no-store")
            self.set_header("X-Content-Type-Options", "nosniff")

        def write_error(self, status_code, **kwargs):
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            exc = kwargs.get("exc_info", (None, None))[1]
            reason = getattr(exc, "log_message", None) or self._reason
            self.finish(f"{status_code}: {reason}\n")

        def check_token(self):
            if not secrets.compare_digest(self.request.headers.get("X-Lensdask-Token", ""), state.token):
                raise tornado.web.HTTPError(403, "missing or wrong token")

    class Page(Base):
        def get(self):
            self.set_header("Content-Type", "text/html; charset=utf-8")
            self.finish(state.page())

    class Image(Base):
        def get(self, index, name):
            png = state.image(int(index), urllib.parse.unquote(name))
            if png is None:
                raise tornado.web.HTTPError(404, "no such picture")
            self.set_header("Content-Type", "image/png")
            self.finish(png)

    class Grades(Base):
        def get(self):
            self.check_token()
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps(state.grades(self.get_query_argument("labeller", "").strip())))

    class Grade(Base):
        def post(self):
            self.check_token()
            try:
                body = json.loads(self.request.body or b"{}")
                added = state.grade(body if isinstance(body, dict) else {})
            except (ValueError, LensdaskError) as exc:
                raise tornado.web.HTTPError(400, " ".join(str(exc).splitlines())) from None
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps(added, default=str))

    class Refuse(Base):
        def get(self, path):
            raise tornado.web.HTTPError(404, "not part of the review app")

        post = get

    return tornado.web.Application(
        [
            (r"/", Page),
            (r"/img/([0-9]{1,9})/([A-Za-z0-9_%+.-]{1,64})\.png", Image),
            (r"/api/grades", Grades),
            (r"/api/grade", Grade),
            (r"/(.*)", Refuse),
        ],
        compress_response=True,
    )


class ReviewServer:
    """The review app on 127.0.0.1:``port``; ``start()`` serves in a thread, ``serve_forever()`` in this one.

    The socket is bound when the server is made, so a port in use is an error at once
    (:class:`~lensdask.errors.LensdaskError` naming the port). ``port=0`` picks a free port.
    """

    def __init__(self, state: ReviewState, port: int | None = None):
        from tornado.netutil import bind_sockets

        port = int(config.get("review.port", port))
        if not 0 <= port <= 65535:
            raise LensdaskError(f"port must be in 0..65535, not {port}")
        try:
            self.sockets = bind_sockets(port, address="127.0.0.1")
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise LensdaskError(f"port {port} on 127.0.0.1 is already in use; choose another with --port") from None
            raise LensdaskError(f"cannot listen on 127.0.0.1 port {port}: {exc.strerror or exc}") from None
        self.state = state
        self.port = self.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()

    async def _main(self) -> None:
        from tornado.httpserver import HTTPServer

        server = HTTPServer(_application(self.state, self.port))
        server.add_sockets(self.sockets)
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server.stop()
            await server.close_all_connections()

    def serve_forever(self) -> None:
        """Serve until interrupted (Ctrl-C)."""
        asyncio.run(self._main())

    def start(self) -> ReviewServer:
        """Serve in a background thread (tests, notebooks); returns when it is listening."""
        self._thread = threading.Thread(target=self.serve_forever, name="lensdask-review", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:  # the loop ended meanwhile (Ctrl-C)
                pass
        if self._thread is not None:
            self._thread.join(30)
        for s in self.sockets:
            s.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


@renamed_keywords(zarr="store")
def serve(
    run_dir, *, labels=None, top: int = 100, port: int | None = None, labeller: str | None = None, store=None
) -> ReviewServer:
    """Make the review app of a run, listening on 127.0.0.1 (not yet serving: call ``start`` or ``serve_forever``).

    See :class:`ReviewState` for the parameters; ``port`` defaults to config ``review.port``.
    """
    state = ReviewState(run_dir, labels, top=top, labeller=labeller, store=store)
    return ReviewServer(state, port)
