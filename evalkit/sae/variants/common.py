"""Helpers the variant modules share: the batch-threshold nonlinearity, linear decoding, the training decoder with
unit rows, the auxiliary-k loss against dead latents, and batch-top-k threshold calibration.

TopK-family training adds the auxiliary-k loss against dead latents (Gao et al. 2024, App. A.2; k_aux = d_in/2,
scaled down when few latents are dead) with coefficient AUX_K_COEFFICIENT = 1/32, as both TopK papers used. sae-lens'
own `TopKTrainingSAEConfig` defaults `aux_loss_coefficient` to 1.0: pass 1/32 for sae-lens matryoshka runs to match.
As in the OpenAI reference (openai/sparse_autoencoder train.py: main loss MSE / Var(x), aux loss
normalized_mse(ê, e) = MSE / Var(e)), the aux loss is the residual's normalized squared error; in sae-lens' units (the
main loss a summed squared error) that is α·‖ê − e‖²·Var(x)/Var(e). sae-lens drops that normalization, which shrinks
the aux term by the SAE's FVU (~1/250 here): batch-top-k k=16 then kept 24-50% dead latents on the embedded world.
(The top-AFA reference averages it over elements with k_aux = 512 and no dead-count scaling.)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE
from sae_lens.saes.sae import SAE, TrainingSAE, TrainStepInput
from sae_lens.saes.topk_sae import calculate_topk_aux_acts

UNSET_THRESHOLD = -1.0
"""θ before the first batch-threshold update (the reference's sentinel); inference then uses batch top-k."""

NORM_EPS = 1e-8
"""Floor for token and encoder-column norms, so a zero input scores b_enc instead of NaN."""


def threshold_relu(hidden_pre: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Batch-threshold inference (JumpReLU with one θ): ReLU(s)·1[s > θ].

    Strict '>' as in the cosine paper's headline recipe (cosine-scored-saes exp40, rerun by exp61:
    `post_relu * (post_relu > threshold)`) and in sae-lens' JumpReLU; earlier experiments there (exp36, exp41)
    used '≥'. The two differ only for a score exactly equal to θ.
    """
    return hidden_pre.relu() * (hidden_pre > threshold).to(hidden_pre.dtype)


def linear_decode(sae: SAE[Any], feature_acts: torch.Tensor) -> torch.Tensor:
    sae_out_pre = sae.hook_sae_recons(feature_acts @ sae.W_dec + sae.b_dec)
    sae_out_pre = sae.run_time_activation_norm_fn_out(sae_out_pre)
    return sae.reshape_fn_out(sae_out_pre, sae.d_head)


AUX_K_COEFFICIENT = 1 / 32


def topk_aux_loss(
    step_input: TrainStepInput,
    sae_out: torch.Tensor,
    hidden_pre: torch.Tensor,
    W_dec_FD: torch.Tensor,
    coefficient: float,
) -> torch.Tensor:
    """Dead latents (top k_aux of their pre-activations) reconstruct the live latents' residual (no b_dec); the
    squared error is normalized by the residual's variance and put in units of the input's (see the module)."""
    dead_F = step_input.dead_neuron_mask
    if dead_F is None or (num_dead := int(dead_F.sum())) == 0 or coefficient == 0:
        return sae_out.new_tensor(0.0)
    residual = (step_input.sae_in - sae_out).detach()
    k_aux = step_input.sae_in.shape[-1] // 2
    scale = min(num_dead / k_aux, 1.0)
    aux_acts = calculate_topk_aux_acts(min(k_aux, num_dead), hidden_pre, dead_F)
    recons = aux_acts @ W_dec_FD
    variance_ratio = total_variance(step_input.sae_in.detach()) / total_variance(residual).clamp_min(1e-12)
    return coefficient * scale * variance_ratio * (recons - residual).pow(2).sum(dim=-1).mean()


def total_variance(x_BD: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ‖x − mean(x)‖² (the denominator of the OpenAI reference's normalized_mse, times d)."""
    return (x_BD - x_BD.mean(dim=0)).pow(2).sum(dim=-1).mean()


class NormalizedAuxMixin:
    """The auxiliary-k loss normalized as in the OpenAI reference (topk_aux_loss) in place of sae-lens' unnormalized
    one. A variant names the decoder its dead latents reconstruct with (`aux_decoder`) and the pre-activations they
    compete on (`aux_hidden`); put the mixin before the sae-lens training class so its method wins."""

    W_dec: torch.nn.Parameter
    cfg: Any

    def aux_decoder(self) -> torch.Tensor:
        return self.W_dec

    def aux_hidden(self, hidden_pre: torch.Tensor) -> torch.Tensor:
        return hidden_pre

    def calculate_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        sae_out: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        hidden = self.aux_hidden(hidden_pre)
        loss = topk_aux_loss(step_input, sae_out, hidden, self.aux_decoder(), self.cfg.aux_loss_coefficient)
        return {"auxiliary_reconstruction_loss": loss}


@torch.no_grad()
def update_batch_threshold(threshold: torch.Tensor, feature_acts: torch.Tensor, lr: float) -> None:
    """EMA of the smallest positive activation; inference thresholds at θ.

    As the cosine reference (exp40): θ starts unset (negative), the first update sets it to the batch's
    smallest positive activation, later ones move it by lr (reference β = 0.999, lr = 0.001). sae-lens'
    BatchTopK instead starts its EMA from 0.
    """
    positive = feature_acts[feature_acts > 0]
    if not positive.numel():
        return
    smallest = positive.min().to(threshold.dtype)
    if float(threshold.max()) < 0:
        threshold.fill_(smallest)
    else:
        threshold.mul_(1 - lr).add_(lr * smallest)


def unit_rows(W_dec_FD: torch.Tensor) -> torch.Tensor:
    return W_dec_FD / W_dec_FD.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def training_decoder(sae: TrainingSAE[Any]) -> torch.Tensor:
    """The decoder a training SAE uses: W_dec, or its unit rows when `cfg.unit_decoder`.

    Both reference codes keep decoder rows at unit norm (renormalise after every step and project the row-
    parallel gradient out); reparameterising d_i = V_i/‖V_i‖ holds the same constraint exactly under
    sae-lens' trainer, which has no per-step hook. The saved inference SAE gets the unit rows.
    """
    return unit_rows(sae.W_dec) if sae.cfg.unit_decoder else sae.W_dec


def decode_with(sae: TrainingSAE[Any], feature_acts: torch.Tensor, W_dec_FD: torch.Tensor) -> torch.Tensor:
    sae_out_pre = sae.hook_sae_recons(feature_acts @ W_dec_FD + sae.b_dec)
    sae_out_pre = sae.run_time_activation_norm_fn_out(sae_out_pre)
    return sae.reshape_fn_out(sae_out_pre, sae.d_head)


def save_training_decoder(sae: TrainingSAE[Any], state_dict: dict[str, Any]) -> None:
    with torch.no_grad():
        state_dict["W_dec"] = training_decoder(sae).detach().clone().contiguous()


# ------------------------------------------------------------------------- batch-top-k threshold calibration

CALIBRATION_BATCHES = 32


@torch.no_grad()
def calibrate_batch_threshold(sae: BatchTopKTrainingSAE, batches: Iterator[torch.Tensor]) -> float:
    """Set a batch-top-k SAE's inference threshold to the mean, over batches, of the smallest activation that batch
    top-k keeps, computed with the final weights (the BatchTopK paper's estimate; Bussmann et al. 2024).

    Why: sae-lens tracks it during training as an exponential average (rate 0.01) that starts at 0 and is not
    bias-corrected, so after a short run it is low (0.99^120 = 30% of the weight is still on the 0 start) and the
    saved SAE fires more than k latents per token. Returns the new threshold.
    """
    minima = []
    for batch_BD in batches:
        acts_BF = sae.encode(batch_BD)
        if (acts_BF > 0).any():
            minima.append(acts_BF[acts_BF > 0].min().double())
    if minima:
        sae.topk_threshold = torch.stack(minima).mean().to(sae.topk_threshold)
    return float(sae.topk_threshold)
