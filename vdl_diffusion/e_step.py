"""The E-step: the UNet, frozen, weighs each image's text-bank candidates by how well they explain it.

The ELBO's diffusion term, over the timesteps it weighs, does not tell the right candidate from a wrong
one: on the toy world the high-noise steps prefer the right position and the others the wrong one, and
the two cancel (docs/text_bank.md). A posterior trained with the UNet either stays on its prior or settles
with the UNet on a labelling of their own. At the timesteps that decide the layout (s ≥ 800), a UNet
trained on the prior's draws does tell them apart. So, once in a run (train.py ``--e_step_at``), the UNet
as it then is scores every cached image's ``k`` candidates by their diffusion loss ``L_j`` over a few
(timestep, noise) draws shared by all ``k``, and from then on the run draws its conditions from

    w_j ∝ π_j exp(-n_latent · L_j / β)

in place of the prior's ``π``: the optimal posterior over the candidates for that UNet, with the band's
loss for the diffusion term. With ``groups`` (e.g. how many attributes a text names) the choice is made
within each group of candidates, each keeping its prior mass, since the loss rewards a condition that names
more; train.py chooses among all ``k``, which on the toy world drew what captions ask for better than the
groups did (docs/text_bank.md).

Each image's choice follows its own loss, so texts that explain more of an image win more often than caption
writers would use them: on the toy world the choice names the background more often, and more often for some
backgrounds than others, so the images whose condition leaves it unnamed no longer show the data's mix, and
the UNet learns a biased image for captions that are silent on it (docs/text_bank.md). ``balance`` takes that
back without knowing what a text says: it scales each bank text's weight, over all images, until its total is
the prior's, so the run's conditions use each text as often as the prior does, on the images it fits best.
"""

import math

import numpy as np
import torch
from accelerate import PartialState
from diffusers import DDPMScheduler, UNet2DConditionModel
from tqdm.auto import tqdm

from .files import write_atomically
from .objective import diffusion_loss
from .text_bank import ROW, BankCandidates


@torch.no_grad()
def candidate_losses(
    unet: UNet2DConditionModel,
    scheduler: DDPMScheduler,
    z0: torch.Tensor,
    t: torch.Tensor,
    timesteps: torch.Tensor,
    noise: torch.Tensor,
    snr_gamma: float | None = None,
) -> torch.Tensor:
    """``L`` (n, k): the diffusion loss of each image ``z0`` (n, C, H, W) under each of its candidates ``t``
    (n, k, D), at one draw of ``timesteps`` (n,) and ``noise`` (like ``z0``) that the ``k`` share, so that
    their losses differ only by ``t``."""
    n, k = t.shape[:2]
    return diffusion_loss(
        unet, scheduler, z0.repeat_interleave(k, 0), t.flatten(0, 1), snr_gamma,
        timesteps=timesteps.repeat_interleave(k), noise=noise.repeat_interleave(k, 0),
    ).view(n, k)


def choose(log_pi: torch.Tensor, losses: torch.Tensor, n_latent: int, beta: float, groups: torch.Tensor | None = None) -> torch.Tensor:
    """``log w`` (n, k): ``w ∝ π exp(-n_latent L / β)``; within each set of equal ``groups`` (n, k), keeping
    the set's prior mass. ``β = inf`` gives ``w = π``."""
    score = log_pi if math.isinf(beta) else log_pi - n_latent * losses / beta
    if groups is None:
        return torch.log_softmax(score, -1)
    log_w = torch.full_like(score, -torch.inf)
    for g in groups.unique():
        member = groups == g
        group_mass = torch.logsumexp(log_pi.masked_fill(~member, -torch.inf), -1, keepdim=True)
        within = torch.log_softmax(score.masked_fill(~member, -torch.inf), -1)
        log_w = torch.where(member, group_mass + within, log_w)
    return log_w


@torch.no_grad()
def e_step(
    unet: UNet2DConditionModel,
    scheduler: DDPMScheduler,
    dataset: BankCandidates,
    bank: torch.Tensor,
    rows: list[int],
    k: int | None = None,
    draws: int = 4,
    min_timestep: int = 800,
    beta: float = 0.05,
    groups: torch.Tensor | None = None,
    snr_gamma: float | None = None,
    batch_images: int = 64,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """The chosen ``log w`` of the dataset's ``rows`` over their first ``k`` candidates (default: all), as
    float32 (len(rows), k_file); entries beyond ``k`` get no mass (-1e4). ``groups`` (N,): a group per bank
    text (`choose`). On the UNet's device; ``draws = 0`` or ``β = inf`` skips the UNet (``w`` = π over ``k``).
    """
    device = unet.device
    file_rows = dataset.candidate_rows()
    k = min(k or file_rows.shape[1], file_rows.shape[1])
    log_w_rows = np.full((len(rows), file_rows.shape[1]), -1e4, dtype=np.float32)
    bank = bank.to(device)
    show = PartialState().is_local_main_process
    for start in tqdm(range(0, len(rows), batch_images), desc="E-step: scoring candidates", disable=not show):
        index = rows[start : start + batch_images]
        z0 = torch.stack([row["latents"] for row in dataset.dataset.__getitems__(index)]).to(device, unet.dtype)
        entries = torch.from_numpy(file_rows["index"][index, :k].astype(np.int64)).to(device)
        log_pi = torch.log_softmax(torch.from_numpy(file_rows["logit"][index, :k].copy()).to(device), -1)
        losses = torch.zeros_like(log_pi)
        for _ in range(0 if math.isinf(beta) else draws):
            s = torch.randint(min_timestep, scheduler.config.num_train_timesteps, (len(index),), generator=generator, device=device)
            noise = torch.randn(z0.shape, generator=generator, device=device, dtype=z0.dtype)
            losses += candidate_losses(unet, scheduler, z0, bank[entries].to(unet.dtype), s, noise, snr_gamma).float() / draws
        log_w = choose(log_pi, losses, z0[0].numel(), beta, None if groups is None else groups.to(device)[entries])
        log_w_rows[start : start + len(index), :k] = log_w.clamp(min=-1e4).cpu().numpy()
    return log_w_rows


def balance(log_w: torch.Tensor, log_pi: torch.Tensor, entries: torch.Tensor, strength: float = 1.0, iterations: int = 200) -> torch.Tensor:
    """``log w'`` (n, k): ``w'_ij ∝ w_ij exp(u_t)`` for the bank text ``t = entries[i, j]``, with one ``u`` per text
    found by Sinkhorn's iterations so that every text's total weight over the ``n`` images is its total under
    ``π``: the choice moves each text to the images it fits, but uses it as often as the prior. ``strength`` λ
    moves each total only λ of the way from the choice's to the prior's (those of ``(1 - λ) w + λ π``), to trade
    the choice's gain against its mention bias (docs/text_bank.md). ``log w``,
    ``log π`` and ``entries`` (n, k) over the same candidates; in float64."""
    texts, text_of = entries.flatten().unique(return_inverse=True)

    def log_total(log_weights: torch.Tensor) -> torch.Tensor:  # per text, without underflow
        flat = log_weights.flatten()
        peak = torch.full((len(texts),), -torch.inf, dtype=flat.dtype, device=flat.device).scatter_reduce(0, text_of, flat, "amax")
        return peak + torch.zeros_like(peak).index_add_(0, text_of, (flat - peak[text_of]).exp()).log()

    def scaled(u: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(log_w + u[text_of].view_as(log_w), -1)

    if not 0 <= strength <= 1:
        raise ValueError(f"`strength` must be in [0, 1], got {strength}.")
    log_w, log_pi = log_w.double(), log_pi.double()
    target = torch.log((1 - strength) * log_w.exp() + strength * log_pi.exp())
    log_target, u = log_total(target), torch.zeros(len(texts), dtype=torch.float64, device=log_w.device)
    for _ in range(iterations):
        u += log_target - log_total(scaled(u))
    return scaled(u)


def write_choice(path, dataset: BankCandidates, log_w: np.ndarray) -> None:
    """A top-k file at ``path`` (`text_bank.ROW`) with the dataset's candidates and the chosen ``log w``
    (one row per image of the dataset), written whole or not at all; `BankCandidates.use_choice` reads it."""
    candidates = dataset.candidate_rows()
    if log_w.shape != candidates.shape:
        raise ValueError(f"The choice has shape {log_w.shape}, the dataset's candidates {candidates.shape}: one row per image, one column per candidate.")

    def write(temporary: str) -> None:
        rows = np.empty(candidates.shape, dtype=ROW)
        rows["index"], rows["logit"] = candidates["index"], log_w
        with open(temporary, "wb") as file:
            np.save(file, rows)

    write_atomically(path, write)


def balance_choice(dataset: BankCandidates, log_w: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """`balance` of a choice over all of the dataset's images (one row each) against the prior's weights in its top-k file."""
    entries = torch.from_numpy(dataset.candidate_rows()["index"].astype(np.int64))
    return balance(torch.from_numpy(log_w), prior_log_weights(dataset), entries, strength).float().numpy()


def kl_from_prior(dataset: BankCandidates, log_w: np.ndarray) -> float:
    """The mean ``KL(w || π)`` over images, in nats: how far the choice moved from the prior."""
    log_pi, log_w = prior_log_weights(dataset), torch.from_numpy(log_w)
    return (log_w.exp() * (log_w - log_pi)).sum(-1).mean().item()


def prior_log_weights(dataset: BankCandidates) -> torch.Tensor:
    """``log π`` (N, k) of every image's candidates, as the dataset's top-k file holds them."""
    return torch.log_softmax(torch.from_numpy(dataset.candidate_rows()["logit"].copy()), -1)
