"""Sparse probing on token-level labels (SAEBench-style; the cosine paper's evidence for its concepts claim).

Per binary label: while streaming, a reservoir sample (Algorithm R, seeded) of at most MAX_PER_CLASS tokens of
each class; only the sampled tokens' codes (sparse) and activations are stored, so memory is bounded by
2·MAX_PER_CLASS·n_labels tokens whatever n_tokens is. At the end, classes are balanced by subsampling, split
80/20 (seeded, stratified); the k latents with the largest |mean_pos − mean_neg| on the training part feed a
LogisticRegression, and the test accuracy is averaged over labels, for k = 1, 5 and for a dense probe on x.

Speed: the store is array-backed (one CSR matrix and one dense matrix, rows sorted by token key), and a probe
problem that was already solved (same training/test matrices, labels and seed) is answered from a small memo;
every SAE evaluated at one hook on the same data samples the same tokens, so the dense probe on x is fitted once.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import torch
from scipy.sparse import csr_matrix, vstack
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from evalkit.core.errors import EvalkitInputError
from evalkit.core.records import EvalContext, MetricValue, SaeBatch
from metrics.base import State, StateValue, stream_metric, token_priority

log = logging.getLogger(__name__)

MAX_PER_CLASS = 2000
MIN_PER_CLASS = 10
"""Labels with fewer sampled examples of either class are not probed."""
TEST_SHARE = 0.2
K_VALUES = (1, 5)
MEMO_SIZE = 512
"""Probe results remembered across SAEs (a few floats each)."""


class Reservoir:
    """A uniform sample of at most `cap` streamed token keys: the `cap` largest seeded priorities
    (`token_priority`), ties by key. Priorities depend on the key alone, so reservoirs of disjoint parts of a
    stream merge into exactly the reservoir of the whole stream."""

    def __init__(self, cap: int, seed: int = 0) -> None:
        self.cap, self.seed = cap, seed
        self.keys = np.empty(0, dtype=np.int64)
        self.priorities = np.empty(0, dtype=np.float64)
        self.seen = 0

    def offer(self, keys: np.ndarray) -> None:
        keys = np.asarray(keys, dtype=np.int64)
        self._keep(keys, token_priority(torch.from_numpy(keys), self.seed).numpy())
        self.seen += keys.size

    def _keep(self, keys: np.ndarray, priorities: np.ndarray) -> None:
        keys = np.concatenate([self.keys, keys])
        priorities = np.concatenate([self.priorities, priorities])
        order = np.lexsort((keys, -priorities))[: self.cap]
        self.keys, self.priorities = keys[order], priorities[order]

    def merge(self, other: Reservoir) -> None:
        self._keep(other.keys, other.priorities)
        self.seen += other.seen

    def load(self, keys: np.ndarray, seen: int) -> None:
        self.keys = np.asarray(keys, dtype=np.int64).copy()
        self.priorities = token_priority(torch.from_numpy(self.keys), self.seed).numpy()
        self.seen = seen

    def sample(self) -> np.ndarray:
        """The kept keys, ascending."""
        return np.sort(self.keys)


class _TokenStore:
    """Sparse codes and dense activations of the tokens some reservoir holds; rows sorted by global token key."""

    def __init__(self, d_sae: int) -> None:
        self.d_sae = d_sae
        self.keys = np.empty(0, dtype=np.int64)
        self.codes = csr_matrix((0, d_sae), dtype=np.float32)
        self.acts: np.ndarray | None = None

    @property
    def n_rows(self) -> int:
        return int(self.keys.size)

    def add(self, keys: np.ndarray, rows: np.ndarray, f_TF: torch.Tensor, x_TD: torch.Tensor) -> None:
        """Append tokens `rows` of this batch; `keys` must all exceed the stored ones (stream order)."""
        index = torch.as_tensor(rows, device=f_TF.device)
        f_sub = f_TF[index].float().cpu()
        # CSR straight from torch's row-major nonzero(): ~3x faster than scipy's dense->CSR (through COO).
        nz = f_sub.nonzero()
        indptr = np.zeros(rows.size + 1, dtype=np.int64)
        indptr[1:] = torch.bincount(nz[:, 0], minlength=rows.size).cumsum(0).numpy()
        codes_sub = csr_matrix(
            (f_sub[nz[:, 0], nz[:, 1]].numpy(), nz[:, 1].numpy(), indptr), shape=(int(rows.size), self.d_sae)
        )
        x_sub = x_TD[index.to(x_TD.device)].float().cpu().numpy()
        self.keys = np.concatenate([self.keys, keys.astype(np.int64)])
        self.codes = vstack([self.codes, codes_sub], format="csr")
        self.acts = x_sub if self.acts is None else np.concatenate([self.acts, x_sub])

    def merge(self, other: _TokenStore) -> None:
        """Union of both stores' rows, sorted by key (a key in both is kept once)."""
        if other.acts is None:
            return
        keys = np.concatenate([self.keys, other.keys])
        codes = vstack([self.codes, other.codes], format="csr")
        acts = other.acts if self.acts is None else np.concatenate([self.acts, other.acts])
        _, first = np.unique(keys, return_index=True)  # sorted unique keys, first occurrence
        self.keys, self.codes, self.acts = keys[first], codes[first], acts[first]

    def state_dict(self) -> dict[str, torch.Tensor]:
        codes = self.codes
        d_in = 0 if self.acts is None else self.acts.shape[1]
        return {
            "keys": torch.from_numpy(self.keys.copy()),
            "codes_indptr": torch.from_numpy(codes.indptr.astype(np.int64)),
            "codes_indices": torch.from_numpy(codes.indices.astype(np.int64)),
            "codes_data": torch.from_numpy(codes.data.astype(np.float32)),
            "acts": torch.from_numpy(self.acts.copy()) if self.acts is not None else torch.empty(0, d_in),
        }

    def load_state_dict(self, state: Mapping[str, StateValue]) -> None:
        tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
        self.keys = tensors["keys"].numpy().astype(np.int64).copy()
        self.codes = csr_matrix(
            (
                tensors["codes_data"].numpy().copy(),
                tensors["codes_indices"].numpy().copy(),
                tensors["codes_indptr"].numpy().copy(),
            ),
            shape=(int(self.keys.size), self.d_sae),
        )
        acts = tensors["acts"].numpy()
        self.acts = acts.astype(np.float32).copy() if self.keys.size else None

    def keep_only(self, wanted_sorted: np.ndarray) -> None:
        keep = np.isin(self.keys, wanted_sorted, assume_unique=True)
        if keep.all():
            return
        self.keys, self.codes = self.keys[keep], self.codes[keep]
        self.acts = self.acts[keep] if self.acts is not None else None

    def _rows_of(self, keys: np.ndarray) -> np.ndarray:
        rows = np.searchsorted(self.keys, keys)
        if rows.size and (rows.max() >= self.keys.size or not np.array_equal(self.keys[rows], keys)):
            raise KeyError("probing: a sampled token is missing from the store")
        return rows

    def code_matrix(self, keys: np.ndarray) -> csr_matrix:
        return self.codes[self._rows_of(keys)]

    def act_matrix(self, keys: np.ndarray) -> np.ndarray:
        if self.acts is None:
            raise KeyError("probing: the store holds no activations")
        return self.acts[self._rows_of(keys)]


def top_k_latents(codes_train: csr_matrix, y_train: np.ndarray, k: int) -> np.ndarray:
    """The k latents with the largest |mean_pos − mean_neg| on the training examples."""
    mean_pos = np.asarray(codes_train[y_train == 1].mean(axis=0)).reshape(-1)
    mean_neg = np.asarray(codes_train[y_train == 0].mean(axis=0)).reshape(-1)
    diff = np.abs(mean_pos - mean_neg)
    return np.argsort(-diff, kind="stable")[:k]


def _standardise(X_train: np.ndarray, X_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """StandardScaler fitted on the training part, in float64; constant columns become exact zeros (their scale
    is 1), so no 0/0 or huge value reaches the solver."""
    X_train, X_test = X_train.astype(np.float64), X_test.astype(np.float64)
    mean = X_train.mean(axis=0)
    std = X_train.std(axis=0)
    constant = std <= 1e-12 * np.maximum(1.0, np.abs(mean))
    scale = np.where(constant, 1.0, std)
    Z_train, Z_test = (X_train - mean) / scale, (X_test - mean) / scale
    Z_train[:, constant] = 0.0
    Z_test[:, constant] = 0.0
    return Z_train, Z_test


_MEMO: OrderedDict[str, float] = OrderedDict()


def _problem_key(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray, seed: int) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for part in (X_train, y_train, X_test, y_test):
        arr = np.ascontiguousarray(part)
        digest.update(f"{arr.dtype}{arr.shape}".encode())
        digest.update(arr.tobytes())
    digest.update(str(seed).encode())
    return digest.hexdigest()


def probe_accuracy(
    X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray, seed: int
) -> float:
    """Test accuracy of a standardised logistic-regression probe (lbfgs, L2, C=1: scikit-learn's defaults).

    Identical problems (same bytes) are answered from a memo: the fit is deterministic given its inputs.
    """
    key = _problem_key(X_train, y_train, X_test, y_test, seed)
    if key in _MEMO:
        _MEMO.move_to_end(key)
        return _MEMO[key]
    Z_train, Z_test = _standardise(X_train, X_test)
    probe = LogisticRegression(max_iter=1000, random_state=seed)
    probe.fit(Z_train, y_train)
    accuracy = float(probe.score(Z_test, y_test))
    _MEMO[key] = accuracy
    if len(_MEMO) > MEMO_SIZE:
        _MEMO.popitem(last=False)
    return accuracy


@stream_metric(
    "probing",
    group="probing",
    produces=("probe_accuracy_k1", "probe_accuracy_k5", "probe_accuracy_dense", "probe_labels_probed"),
    requires=("labels",),
    version=2,  # v2: reservoirs keyed on token-key priorities (mergeable across shards)
    # No token-level stderr: the jackknife would refit every probe K more times. The accuracies' noise is
    # mostly the test split's (docs/uncertainty.md); their stderr is null.
    jackknife=False,
)
class SparseProbing:
    """Reservoir-samples labelled tokens while streaming; fits the probes in `compute`."""

    def __init__(self, sae: torch.nn.Module, ctx: EvalContext) -> None:
        self.d_sae = int(sae.W_dec.shape[0])
        self.seed = ctx.seed
        self.reservoirs: list[tuple[Reservoir, Reservoir]] = []
        self.store = _TokenStore(self.d_sae)
        self.n_seen = 0

    def update(self, batch: SaeBatch) -> None:
        if batch.labels_TL is None:
            raise EvalkitInputError("--labels", "the probing metrics need token labels; this batch has none")
        labels_TL = batch.labels_TL.bool().cpu().numpy()
        if not self.reservoirs:
            n_labels = labels_TL.shape[1]
            self.reservoirs = self._new_reservoirs(n_labels)
        keys_T = batch.token_keys(self.n_seen).numpy()
        for j, (neg, pos) in enumerate(self.reservoirs):
            neg.offer(keys_T[~labels_TL[:, j]])
            pos.offer(keys_T[labels_TL[:, j]])
        wanted = self._wanted()
        new_rows = np.flatnonzero(np.isin(keys_T, wanted, assume_unique=True))
        self.store.keep_only(wanted)
        if new_rows.size:
            self.store.add(keys_T[new_rows], new_rows, batch.f_TF, batch.x_TD)
        self.n_seen += labels_TL.shape[0]

    def _new_reservoirs(self, n_labels: int) -> list[tuple[Reservoir, Reservoir]]:
        return [(Reservoir(MAX_PER_CLASS, self.seed), Reservoir(MAX_PER_CLASS, self.seed)) for _ in range(n_labels)]

    def _wanted(self) -> np.ndarray:
        return np.unique(np.concatenate([np.empty(0, np.int64), *(r.keys for pair in self.reservoirs for r in pair)]))

    def state_dict(self) -> State:
        state: State = {"n_seen": self.n_seen, "n_labels": len(self.reservoirs)}
        for j, pair in enumerate(self.reservoirs):
            for cls, res in enumerate(pair):
                state[f"reservoir.{j}.{cls}.keys"] = torch.from_numpy(res.sample())
                state[f"reservoir.{j}.{cls}.seen"] = res.seen
        state.update({f"store.{k}": v for k, v in self.store.state_dict().items()})
        return state

    def load_state_dict(self, state: Mapping[str, StateValue]) -> None:
        self.n_seen = int(state["n_seen"])
        self.reservoirs = self._new_reservoirs(int(state["n_labels"]))
        for j, pair in enumerate(self.reservoirs):
            for cls, res in enumerate(pair):
                keys = state[f"reservoir.{j}.{cls}.keys"]
                assert isinstance(keys, torch.Tensor)
                res.load(keys.numpy(), int(state[f"reservoir.{j}.{cls}.seen"]))
        self.store = _TokenStore(self.d_sae)
        self.store.load_state_dict({k[len("store.") :]: v for k, v in state.items() if k.startswith("store.")})

    def merge(self, other: SparseProbing) -> None:
        if not other.reservoirs:
            self.n_seen += other.n_seen
            return
        if not self.reservoirs:
            self.reservoirs = self._new_reservoirs(len(other.reservoirs))
        for (neg, pos), (o_neg, o_pos) in zip(self.reservoirs, other.reservoirs, strict=True):
            neg.merge(o_neg)
            pos.merge(o_pos)
        self.store.merge(other.store)
        self.store.keep_only(self._wanted())
        self.n_seen += other.n_seen

    def _probe_label(self, neg: Reservoir, pos: Reservoir) -> dict[str, float] | None:
        neg_keys, pos_keys = neg.sample(), pos.sample()
        n = min(neg_keys.size, pos_keys.size)
        if n < MIN_PER_CLASS:
            return None
        rng = np.random.default_rng(self.seed)
        keys = np.concatenate([rng.choice(neg_keys, n, replace=False), rng.choice(pos_keys, n, replace=False)])
        y = np.concatenate([np.zeros(n, np.int64), np.ones(n, np.int64)])
        train, test = train_test_split(np.arange(2 * n), test_size=TEST_SHARE, stratify=y, random_state=self.seed)
        codes = self.store.code_matrix(keys)
        codes_train = codes[train]
        result = {}
        for k in K_VALUES:
            chosen = top_k_latents(codes_train, y[train], min(k, self.d_sae))
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
