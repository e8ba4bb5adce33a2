"""Sparse probing on token-level labels (SAEBench-style; the cosine paper's evidence for its concepts claim).

Per binary label: while streaming, a reservoir sample (Algorithm R, seeded) of at most MAX_PER_CLASS tokens of
each class; only the sampled tokens' codes (sparse) and activations are stored, so memory is bounded by
2·MAX_PER_CLASS·n_labels tokens whatever n_tokens is. At the end, classes are balanced by subsampling, split
80/20 (seeded, stratified); the k latents with the largest |mean_pos − mean_neg| on the training part feed a
LogisticRegression, and the test accuracy is averaged over labels, for k = 1, 5 and for a dense probe on x.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from scipy.sparse import csr_matrix
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from evalkit.errors import EvalkitInputError
from metrics.base import EvalContext, MetricValue, SaeBatch, stream_metric

log = logging.getLogger(__name__)

MAX_PER_CLASS = 2000
MIN_PER_CLASS = 10
"""Labels with fewer sampled examples of either class are not probed."""
TEST_SHARE = 0.2
K_VALUES = (1, 5)


class Reservoir:
    """Algorithm R over a stream of token keys: a uniform sample of at most `cap` of them."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.keys = np.full(cap, -1, dtype=np.int64)
        self.seen = 0

    def offer(self, keys: np.ndarray, rng: np.random.Generator) -> None:
        """Offer keys in stream order; the n-th item (0-based) replaces slot j ~ U{0..n} when j < cap."""
        n_k = self.seen + np.arange(keys.size)
        slot = np.where(n_k < self.cap, n_k, np.floor(rng.random(keys.size) * (n_k + 1)).astype(np.int64))
        keep = slot < self.cap
        slot, kept = slot[keep], keys[keep]
        # Several offers may hit one slot in a batch; Algorithm R lets the last one win.
        _, last = np.unique(slot[::-1], return_index=True)
        self.keys[slot[::-1][last]] = kept[::-1][last]
        self.seen += keys.size

    def sample(self) -> np.ndarray:
        return self.keys[self.keys >= 0]


class _TokenStore:
    """Sparse codes and dense activations of the tokens some reservoir holds, keyed by global token index."""

    def __init__(self) -> None:
        self.codes: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.acts: dict[int, np.ndarray] = {}

    def add(self, keys: np.ndarray, rows: np.ndarray, f_TF: torch.Tensor, x_TD: torch.Tensor) -> None:
        f_sub = f_TF[torch.as_tensor(rows, device=f_TF.device)].float().cpu()
        x_sub = x_TD[torch.as_tensor(rows, device=x_TD.device)].float().cpu().numpy()
        for key, f_row, x_row in zip(keys.tolist(), f_sub, x_sub, strict=True):
            idx = f_row.nonzero().flatten()
            self.codes[key] = (idx.numpy().astype(np.int64), f_row[idx].numpy())
            self.acts[key] = x_row

    def keep_only(self, wanted: set[int]) -> None:
        for key in [k for k in self.codes if k not in wanted]:
            del self.codes[key], self.acts[key]

    def code_matrix(self, keys: np.ndarray, d_sae: int) -> csr_matrix:
        rows = [self.codes[int(k)] for k in keys]
        indptr = np.cumsum([0] + [r[0].size for r in rows])
        indices = np.concatenate([r[0] for r in rows]) if rows else np.empty(0, np.int64)
        data = np.concatenate([r[1] for r in rows]) if rows else np.empty(0, np.float32)
        return csr_matrix((data, indices, indptr), shape=(len(rows), d_sae))

    def act_matrix(self, keys: np.ndarray) -> np.ndarray:
        return np.stack([self.acts[int(k)] for k in keys])


def top_k_latents(codes_train: csr_matrix, y_train: np.ndarray, k: int) -> np.ndarray:
    """The k latents with the largest |mean_pos − mean_neg| on the training examples."""
    mean_pos = np.asarray(codes_train[y_train == 1].mean(axis=0)).reshape(-1)
    mean_neg = np.asarray(codes_train[y_train == 0].mean(axis=0)).reshape(-1)
    diff = np.abs(mean_pos - mean_neg)
    return np.argsort(-diff, kind="stable")[:k]


def probe_accuracy(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray,
                   seed: int) -> float:
    """Test accuracy of a standardised logistic-regression probe."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
    probe.fit(X_train, y_train)
    return float(probe.score(X_test, y_test))


@stream_metric(
    "probing", group="probing",
    produces=("probe_accuracy_k1", "probe_accuracy_k5", "probe_accuracy_dense", "probe_labels_probed"),
    requires=("labels",),
)
class SparseProbing:
    """Reservoir-samples labelled tokens while streaming; fits the probes in `compute`."""

    def __init__(self, sae: torch.nn.Module, ctx: EvalContext) -> None:
        self.d_sae = int(sae.W_dec.shape[0])
        self.seed = ctx.seed
        self.rng = np.random.default_rng(ctx.seed)
        self.reservoirs: list[tuple[Reservoir, Reservoir]] = []
        self.store = _TokenStore()
        self.n_seen = 0

    def update(self, batch: SaeBatch) -> None:
        if batch.labels_TL is None:
            raise EvalkitInputError("--labels", "the probing metrics need token labels; this batch has none")
        labels_TL = batch.labels_TL.bool().cpu().numpy()
        if not self.reservoirs:
            n_labels = labels_TL.shape[1]
            self.reservoirs = [(Reservoir(MAX_PER_CLASS), Reservoir(MAX_PER_CLASS)) for _ in range(n_labels)]
        keys_T = self.n_seen + np.arange(labels_TL.shape[0])
        for j, (neg, pos) in enumerate(self.reservoirs):
            neg.offer(keys_T[~labels_TL[:, j]], self.rng)
            pos.offer(keys_T[labels_TL[:, j]], self.rng)
        wanted = {int(k) for pair in self.reservoirs for r in pair for k in r.sample()}
        new_rows = np.flatnonzero(np.isin(keys_T, np.fromiter(wanted, dtype=np.int64)))
        if new_rows.size:
            self.store.add(keys_T[new_rows], new_rows, batch.f_TF, batch.x_TD)
        self.store.keep_only(wanted)
        self.n_seen += labels_TL.shape[0]

    def _probe_label(self, neg: Reservoir, pos: Reservoir) -> dict[str, float] | None:
        neg_keys, pos_keys = neg.sample(), pos.sample()
        n = min(neg_keys.size, pos_keys.size)
        if n < MIN_PER_CLASS:
            return None
        rng = np.random.default_rng(self.seed)
        keys = np.concatenate([rng.choice(neg_keys, n, replace=False),
                               rng.choice(pos_keys, n, replace=False)])
        y = np.concatenate([np.zeros(n, np.int64), np.ones(n, np.int64)])
        train, test = train_test_split(np.arange(2 * n), test_size=TEST_SHARE, stratify=y,
                                       random_state=self.seed)
        codes = self.store.code_matrix(keys, self.d_sae)
        result = {}
        for k in K_VALUES:
            chosen = top_k_latents(codes[train], y[train], min(k, self.d_sae))
            X = codes[:, chosen].toarray()
            result[f"probe_accuracy_k{k}"] = probe_accuracy(X[train], y[train], X[test], y[test], self.seed)
        acts = self.store.act_matrix(keys)
        result["probe_accuracy_dense"] = probe_accuracy(acts[train], y[train], acts[test], y[test], self.seed)
        return result

    def compute(self) -> list[MetricValue]:
        per_label = [r for neg, pos in self.reservoirs if (r := self._probe_label(neg, pos)) is not None]
        if not per_label:
            log.warning("probing: no label has %d examples of each class; nothing probed", MIN_PER_CLASS)
            return []
        out = [MetricValue(name, float(np.mean([r[name] for r in per_label]))) for name in per_label[0]]
        return [*out, MetricValue("probe_labels_probed", float(len(per_label)))]
