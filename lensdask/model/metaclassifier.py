"""A committee's networks in torch: the meta-classifier and the module that runs members and meta as one model.

A committee (:mod:`lensdask.model.committee`) combines the lens probabilities of two or three
trained networks with a learned meta-classifier. Its features are the members' lens-probability
logits, ``z_i = log(p_i / (1 - p_i))`` with ``p_i`` clipped to ``[EPS, 1 - EPS]``, in member order;
its output is the committee's lens probability. :class:`Committee` wraps the members and the meta
so that the pair is one ``torch.nn.Module`` whose softmax gives class probabilities: every caller
of :func:`~lensdask.model.checkpoint.load_checkpoint` (evaluate, inject, search, the cascade) scores
it as it scores any model. Pure torch; nothing here reads or writes files.
"""

from __future__ import annotations

import torch

from ..errors import CheckpointError, LensdaskError
from .infer import resize

META_KINDS = ("logistic", "mlp")
"""Meta-classifiers: ``logistic`` (a weight per member and an intercept), ``mlp`` (one hidden tanh layer)."""

EPS = 1e-6
"""Lens probabilities are clipped to ``[EPS, 1 - EPS]`` before their logits are taken (|z| <= 13.8)."""

DIGEST_BYTES = 32


def member_logits(p: torch.Tensor) -> torch.Tensor:
    """The meta-classifier's features: logits of lens probabilities ``p`` (any shape), clipped to ``[EPS, 1 - EPS]``."""
    p = p.clamp(EPS, 1.0 - EPS)
    return torch.log(p) - torch.log1p(-p)


def digest_tensor(digests) -> torch.Tensor:
    """SHA-256 hex digests as a (k, 32) uint8 tensor (stored beside the meta's weights, so the
    committee's own fingerprint covers which members it combines)."""
    try:
        rows = [list(bytes.fromhex(str(d))) for d in digests]
    except ValueError as exc:
        raise CheckpointError(f"not a SHA-256 hex digest among {list(digests)}: {exc}") from None
    if any(len(r) != DIGEST_BYTES for r in rows):
        raise CheckpointError(f"not SHA-256 digests: {list(digests)}")
    return torch.tensor(rows, dtype=torch.uint8).reshape(len(rows), DIGEST_BYTES)


class MetaClassifier(torch.nn.Module):
    """The lens probability from the members' logits, (n, k) -> (n,).

    Parameters
    ----------
    kind : {"logistic", "mlp"}
        ``logistic``: ``sigmoid(z @ w + b)``. ``mlp``: ``sigmoid(tanh(z @ W1 + b1) @ w2 + b2)``.
    n_members : int
        Members, the features' count.
    hidden : int
        Hidden units of ``mlp`` (ignored for ``logistic``).

    The buffer ``member_sha256`` (k, 32) holds the members' weight digests, in order.
    """

    member_sha256: torch.Tensor

    def __init__(self, kind: str = "logistic", n_members: int = 2, hidden: int = 8):
        super().__init__()
        if kind not in META_KINDS:
            raise LensdaskError(f"unknown meta-classifier {kind!r}; use one of {', '.join(META_KINDS)}")
        if int(n_members) < 2:
            raise LensdaskError(f"a committee needs at least two members, got {n_members}")
        self.kind = kind
        self.n_members = int(n_members)
        self.hidden = int(hidden)
        if kind == "logistic":
            self.out = torch.nn.Linear(self.n_members, 1)
        else:
            self.hidden_layer = torch.nn.Linear(self.n_members, self.hidden)
            self.out = torch.nn.Linear(self.hidden, 1)
        self.register_buffer("member_sha256", torch.zeros(self.n_members, DIGEST_BYTES, dtype=torch.uint8))

    @property
    def arch_kwargs(self) -> dict:
        """What rebuilds this network (the committee card's ``arch_kwargs``)."""
        kw: dict = {"family": "committee", "meta": self.kind, "n_members": self.n_members}
        if self.kind == "mlp":
            kw["hidden"] = self.hidden
        return kw

    @classmethod
    def from_kwargs(cls, kwargs: dict) -> MetaClassifier:
        """The network of a committee card's ``arch_kwargs`` (:attr:`arch_kwargs`)."""
        if kwargs.get("family") != "committee":
            raise CheckpointError(f"not a committee's arch_kwargs: {kwargs}")
        return cls(str(kwargs.get("meta")), int(kwargs.get("n_members", 0)), int(kwargs.get("hidden", 8)))

    def logit(self, z: torch.Tensor) -> torch.Tensor:
        """The committee's lens logit from the features ``z`` (n, k)."""
        h = z if self.kind == "logistic" else torch.tanh(self.hidden_layer(z))
        return self.out(h).squeeze(-1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logit(z))

    def describe(self) -> dict:
        """Its parameters as plain lists, for the card (``weight``/``bias`` of each layer, float64)."""
        out: dict = {"kind": self.kind, "features": "logit of each member's lens probability, in member order"}
        if self.kind == "logistic":
            out["coefficients"] = self.out.weight.detach().double().reshape(-1).tolist()
            out["intercept"] = float(self.out.bias.detach().double().item())
        else:
            out["hidden"] = self.hidden
            out["activation"] = "tanh"
            out["layers"] = [
                {"weight": layer.weight.detach().double().tolist(), "bias": layer.bias.detach().double().tolist()}
                for layer in (self.hidden_layer, self.out)
            ]
        return out


def fit_meta(
    z: torch.Tensor, y: torch.Tensor, kind: str = "logistic", *, hidden: int = 8, l2: float = 1e-3, seed: int = 0
) -> MetaClassifier:
    """Fit a :class:`MetaClassifier` to features ``z`` (n, k) and lens truth ``y`` (n,), deterministically.

    Full-batch L-BFGS in float64 on the CPU of the mean log loss plus ``l2 / 2`` times the squared
    weights (intercepts are not penalised; for ``logistic`` this is scikit-learn's
    ``LogisticRegression(C=1 / (l2 * n))``). ``mlp`` starts from weights drawn with ``seed``.

    Returns
    -------
    MetaClassifier
        In float32, eval mode.
    """
    z = torch.as_tensor(z, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64)
    gen = torch.Generator().manual_seed(int(seed))
    meta = MetaClassifier(kind, z.shape[1], hidden).double()
    with torch.no_grad():
        for p in meta.parameters():  # drawn from our generator, not torch's global one
            if p.ndim == 2:
                bound = 1.0 / p.shape[1] ** 0.5
                p.copy_((torch.rand(p.shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound)
            else:
                p.zero_()
        if kind == "logistic":
            meta.out.weight.fill_(1.0 / z.shape[1])  # the mean logit: a good start, and convex anyway
    weights = [p for n, p in meta.named_parameters() if n.endswith("weight")]
    opt = torch.optim.LBFGS(
        list(meta.parameters()), lr=1.0, max_iter=500, tolerance_grad=1e-10, tolerance_change=1e-12,
        history_size=20, line_search_fn="strong_wolfe",
    )  # fmt: skip
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def closure():
        opt.zero_grad()
        loss = loss_fn(meta.logit(z), y) + 0.5 * float(l2) * sum((w**2).sum() for w in weights)
        loss.backward()
        return loss

    opt.step(closure)
    meta = meta.float()
    meta.eval()
    return meta


class Committee(torch.nn.Module):
    """Members and meta-classifier as one model: ``forward`` gives log class probabilities.

    The members see the same normalised stamps (a committee's members share their normalisation),
    each resampled to its own input side. The lens class's probability is the meta-classifier's
    output; every other class gets the members' mean probability of it, scaled so the classes sum to
    one. ``softmax(forward(x))`` are thus the committee's class probabilities, as for any classifier.

    Parameters
    ----------
    members : list of torch.nn.Module
        The members, in the card's order.
    input_sizes : list of int or None
        Each member's input side when it is not the stamp (its card's ``input_size``).
    meta : MetaClassifier
    lens_class : int
        Index of the lens class among the (shared) classes.
    num_classes : int
    """

    def __init__(self, members, input_sizes, meta: MetaClassifier, lens_class: int, num_classes: int):
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        self.input_sizes = list(input_sizes)
        self.meta = meta
        self.lens_class = int(lens_class)
        self.num_classes = int(num_classes)

    def member_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Each member's class probabilities of normalised stamps ``x``, (k, n, n_classes) float32."""
        return torch.stack(
            [torch.softmax(m(resize(x, s)).float(), dim=1) for m, s in zip(self.members, self.input_sizes)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = self.member_proba(x)
        with torch.autocast(x.device.type, enabled=False):
            lens = self.meta(member_logits(probs[:, :, self.lens_class].T.float()))
            mean = probs.mean(dim=0)
            rest = mean.clone()
            rest[:, self.lens_class] = 0.0
            total = rest.sum(dim=1, keepdim=True)
            if self.num_classes > 1:
                even = torch.full_like(rest, 1.0 / (self.num_classes - 1))
                even[:, self.lens_class] = 0.0
                rest = torch.where(total > 0, rest / total.clamp_min(1e-30), even)
            out = rest * (1.0 - lens)[:, None]
            out[:, self.lens_class] = lens
            return torch.log(out.clamp_min(1e-30))
