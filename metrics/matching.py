"""One-to-one matching of two dictionaries by decoder cosine, exact or approximate by size.

Exact: the dense cosine matrix and scipy's `linear_sum_assignment` (up to HUNGARIAN_MAX latents).
Approximate **(evalkit)**, for larger dictionaries, never holding the full cosine matrix:
  1. a blocked pass keeps each row's and each column's top-K cosines (and the row/column maxima for MMCS);
  2. a greedy matching on those candidate edges (best edge first), the few rows left unmatched solved by
     Hungarian on their own cosine sub-matrix, gives a full matching;
  3. the optimal full matching restricted to the candidate edges plus the greedy matching's edges
     (scipy `min_weight_full_bipartite_matching`, exact on a sparse graph), which can only improve on step 2.
The optimal assignment almost never uses an edge outside the top-K of both its endpoints, so step 3 is the
Hungarian optimum in practice; tests hold it within 0.01 of Hungarian's mean at 4096 latents.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

HUNGARIAN_MAX = 8192
TOP_K = 8
ROW_BLOCK = 1024


@dataclass(frozen=True)
class Matching:
    """A one-to-one matching of rows of A to rows of B (min(n_A, n_B) pairs)."""

    rows: np.ndarray
    cols: np.ndarray
    cos: np.ndarray
    """Decoder cosine of each matched pair."""
    best_A: np.ndarray
    """Max cosine of each row of A to any row of B [n_A]."""
    best_B: np.ndarray
    """Max cosine of each row of B to any row of A [n_B]."""


def unit(W_FD: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm, float32 on CPU (zero rows stay zero)."""
    W = W_FD.detach().float().cpu()
    return W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)


def match_exact(A_hat: torch.Tensor, B_hat: torch.Tensor) -> Matching:
    """Hungarian matching on the dense cosine matrix."""
    cos_AB = (A_hat @ B_hat.T).double().numpy()
    rows, cols = linear_sum_assignment(cos_AB, maximize=True)
    return Matching(rows, cols, cos_AB[rows, cols], cos_AB.max(axis=1), cos_AB.max(axis=0))


Candidates = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _candidates(A_hat: torch.Tensor, B_hat: torch.Tensor, k: int) -> Candidates:
    """Blocked pass: row top-k (values, indices) [n_A, k], column top-k [n_B, k], row max, column max."""
    n_A, n_B = A_hat.shape[0], B_hat.shape[0]
    k_row, k_col = min(k, n_B), min(k, n_A)
    row_val, row_idx = torch.empty(n_A, k_row), torch.empty(n_A, k_row, dtype=torch.int64)
    col_val = torch.full((k_col, n_B), -float("inf"))
    col_idx = torch.zeros(k_col, n_B, dtype=torch.int64)
    for start in range(0, n_A, ROW_BLOCK):
        sim = A_hat[start : start + ROW_BLOCK] @ B_hat.T
        row_val[start : start + sim.shape[0]], row_idx[start : start + sim.shape[0]] = sim.topk(k_row, dim=1)
        blk_val, blk_idx = sim.topk(min(k_col, sim.shape[0]), dim=0)
        merged_val = torch.cat([col_val, blk_val])
        merged_idx = torch.cat([col_idx, blk_idx + start])
        col_val, pick = merged_val.topk(k_col, dim=0)
        col_idx = merged_idx.gather(0, pick)
    return row_val, row_idx, col_val.T, col_idx.T, row_val[:, 0], col_val[0]


def _greedy_full(
    A_hat: torch.Tensor, B_hat: torch.Tensor, edges_r: np.ndarray, edges_c: np.ndarray, edges_w: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Best-edge-first greedy on the candidate edges, then Hungarian on the rows and columns left over."""
    n_A, n_B = A_hat.shape[0], B_hat.shape[0]
    taken_r, taken_c = np.zeros(n_A, bool), np.zeros(n_B, bool)
    rows, cols = [], []
    for e in np.argsort(-edges_w, kind="stable"):
        r, c = edges_r[e], edges_c[e]
        if not (taken_r[r] or taken_c[c]):
            taken_r[r] = taken_c[c] = True
            rows.append(r)
            cols.append(c)
    left_r, left_c = np.flatnonzero(~taken_r), np.flatnonzero(~taken_c)
    if left_r.size and left_c.size:
        sub = (A_hat[left_r] @ B_hat[left_c].T).double().numpy()
        sub_r, sub_c = linear_sum_assignment(sub, maximize=True)
        rows += left_r[sub_r].tolist()
        cols += left_c[sub_c].tolist()
    return np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)


def match_approx(A_hat: torch.Tensor, B_hat: torch.Tensor, k: int = TOP_K) -> Matching:
    """Approximate maximum-cosine matching for large dictionaries (see the module docstring)."""
    row_val, row_idx, col_val, col_idx, best_A, best_B = _candidates(A_hat, B_hat, k)
    n_A, n_B = A_hat.shape[0], B_hat.shape[0]
    r = np.concatenate([np.repeat(np.arange(n_A), row_idx.shape[1]), col_idx.reshape(-1).numpy()])
    c = np.concatenate([row_idx.reshape(-1).numpy(), np.repeat(np.arange(n_B), col_idx.shape[1])])
    w = np.concatenate([row_val.reshape(-1).numpy(), col_val.reshape(-1).numpy()]).astype(np.float64)
    g_rows, g_cols = _greedy_full(A_hat, B_hat, r, c, w)
    g_w = (A_hat[g_rows] * B_hat[g_cols]).sum(dim=1).double().numpy()
    r, c, w = np.concatenate([r, g_rows]), np.concatenate([c, g_cols]), np.concatenate([w, g_w])
    # Every full matching has the same number of edges, so shifting weights by +2 keeps the optimum and keeps
    # every weight nonzero (scipy drops explicit zeros). Duplicate edges carry equal weights: keep one.
    key = r * n_B + c
    _, first = np.unique(key, return_index=True)
    graph = coo_matrix((w[first] + 2.0, (r[first], c[first])), shape=(n_A, n_B)).tocsr()
    rows, cols = min_weight_full_bipartite_matching(graph, maximize=True)
    cos = (A_hat[torch.as_tensor(rows)] * B_hat[torch.as_tensor(cols)]).sum(dim=1).double().numpy()
    return Matching(rows, cols, cos, best_A.double().numpy(), best_B.double().numpy())


def match_dictionaries(W_dec_A: torch.Tensor, W_dec_B: torch.Tensor, exact_max: int = HUNGARIAN_MAX) -> Matching:
    """Match rows of A to rows of B by decoder cosine: Hungarian up to `exact_max` latents, else approx."""
    A_hat, B_hat = unit(W_dec_A), unit(W_dec_B)
    if max(A_hat.shape[0], B_hat.shape[0]) <= exact_max:
        return match_exact(A_hat, B_hat)
    return match_approx(A_hat, B_hat)
