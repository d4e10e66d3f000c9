"""The training objective: the negative ELBO of METHOD.md.

    loss = L_diff(z0, t̃) + β · KL(q(t | x, y) || p(t | y)) / n_latent,   t̃ ~ q(t | x, y)

``n_latent`` (C·H·W of the latent) puts the KL on the per-dimension scale of the mean-squared
diffusion loss. Captioned images (semi-supervised) add ``λ · (-log q(t* | x, y)) / n_latent``.
"""

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import compute_snr
from torch import nn

from .conditioning import condition


def beta_at(step: int, beta: float = 1.0, warmup_steps: int = 0) -> float:
    """β with an optional linear warm-up from 0 over ``warmup_steps``."""
    return beta * min(1.0, step / warmup_steps) if warmup_steps > 0 else beta


def diffusion_loss(
    unet: UNet2DConditionModel,
    scheduler: DDPMScheduler,
    z0: torch.Tensor,
    t: torch.Tensor,
    snr_gamma: float | None = None,
    noise_offset: float = 0.0,
    timesteps: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample ``E_{s,ε} w(s) ||target - net(z_s, s, t)||²`` (ε or v target, optional Min-SNR ``w``).

    ``timesteps`` and ``noise`` fix ``s`` and ``ε`` per sample (e.g. one draw shared by several ``t``
    of the same image, so that their losses differ only by ``t``); by default both are drawn.
    """
    if noise is None:
        noise = sample_noise(z0, noise_offset)
    s = timesteps
    if s is None:
        s = torch.randint(0, scheduler.config.num_train_timesteps, (z0.shape[0],), device=z0.device)
    z_s = scheduler.add_noise(z0, noise, s)
    if scheduler.config.prediction_type == "epsilon":
        target = noise
    elif scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(z0, noise, s)
    else:
        raise ValueError(f"Unsupported prediction type {scheduler.config.prediction_type!r}; use epsilon or v_prediction.")
    prediction = unet(z_s, s, encoder_hidden_states=None, added_cond_kwargs={"image_embeds": t.to(z_s.dtype)}).sample
    loss = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if snr_gamma is not None:
        loss = loss * min_snr_weight(scheduler, s, snr_gamma)
    return loss


def sample_noise(z0: torch.Tensor, noise_offset: float = 0.0) -> torch.Tensor:
    """``ε`` for ``z0``, with an optional per-channel offset (Guttenberg 2023)."""
    noise = torch.randn_like(z0)
    if noise_offset:
        noise = noise + noise_offset * torch.randn(z0.shape[0], z0.shape[1], 1, 1, device=z0.device, dtype=z0.dtype)
    return noise


def min_snr_weight(scheduler: DDPMScheduler, timesteps: torch.Tensor, snr_gamma: float) -> torch.Tensor:
    """Min-SNR-γ loss weights (Hang et al. 2023) for the scheduler's ε or v target."""
    snr = compute_snr(scheduler, timesteps)
    return snr.clamp(max=snr_gamma) / (snr + 1 if scheduler.config.prediction_type == "v_prediction" else snr)


@torch.no_grad()
def elbo_scale(
    unet: UNet2DConditionModel, scheduler: DDPMScheduler, z0: torch.Tensor, t: torch.Tensor, snr_gamma: float | None = None
) -> float:
    """How many times the ELBO's diffusion term exceeds ``L_diff``, both per latent dimension.

    The objective weighs ``KL / n_latent`` by β against ``L_diff``; the ELBO weighs it by 1 against
    ``-log p(z0 | t)``, bounded by VDM's discrete sum ``½ Σ_s (SNR(s-1) - SNR(s)) ||z0 - ẑ0||²`` of
    the same errors. With ``scale`` their ratio, ``β = 1 / scale`` gives the KL its ELBO share.
    Every timestep is visited once with the batch ``(z0, t)``; both sides weigh the same errors.
    """
    steps = torch.arange(1, scheduler.config.num_train_timesteps, device=z0.device)
    error = torch.stack([diffusion_loss(unet, scheduler, z0, t, timesteps=s.expand(z0.shape[0])).mean() for s in steps]).double()
    snr = compute_snr(scheduler, torch.cat([steps[:1] - 1, steps])).double()
    # ||z0 - ẑ0||² per unit of squared target error: 1 / SNR for ε, 1 - ᾱ = 1 / (SNR + 1) for v.
    to_z0 = 1 / snr[1:] if scheduler.config.prediction_type == "epsilon" else 1 / (snr[1:] + 1)
    bound = (0.5 * (snr[:-1] - snr[1:]) * to_z0 * error).sum()
    loss = (error * min_snr_weight(scheduler, steps, snr_gamma).double()).mean() if snr_gamma is not None else error.mean()
    return (bound / loss).item()


class ELBO(nn.Module):
    """Everything that trains, in one module: UNet ``θ``, posterior ``φ``, prior, null embedding.

    One module so that Accelerate wraps it once, whatever the backend (DDP, FSDP, DeepSpeed), and
    ``forward`` returns the loss as the training loop needs it. ``forward`` never waits on the device
    (no ``.item()``, no branch on a tensor's value): it compiles to one graph with
    ``torch.compile(fullgraph=True)``. ``captions=False`` (no image of the run has a visible caption,
    the dataset's ``num_captions == 0``) skips the caption terms.
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        scheduler: DDPMScheduler,
        method: str = "vdl",
        posterior: nn.Module | None = None,
        prior: nn.Module | None = None,
        p_uncond: float = 0.1,
        learn_null_embedding: bool = False,
        lafite_xi: float = 0.75,
        caption_weight: float = 1.0,
        snr_gamma: float | None = None,
        noise_offset: float = 0.0,
        captions: bool = True,
        posterior_samples: int = 1,
    ):
        super().__init__()
        if method == "vdl" and (posterior is None or prior is None):
            raise ValueError("Method `vdl` needs both a `posterior` and a `prior`.")
        if method == "prior-sample" and prior is None:
            raise ValueError("Method `prior-sample` needs a `prior`.")
        if not 0 <= p_uncond < 1:
            raise ValueError(f"`p_uncond` must be in [0, 1), got {p_uncond}.")
        self.unet, self.posterior, self.prior, self.scheduler = unet, posterior, prior, scheduler
        self.method, self.p_uncond, self.lafite_xi = method, p_uncond, lafite_xi
        self.caption_weight, self.snr_gamma, self.noise_offset = caption_weight, snr_gamma, noise_offset
        self.captions = captions  # whether any image has a visible caption: known from the dataset, never asked of a batch
        self.posterior_samples = posterior_samples
        null = torch.zeros(unet.config.encoder_hid_dim)
        self.null_embedding = nn.Parameter(null, requires_grad=learn_null_embedding)
        if prior is not None:
            # The prior's buffers (m_T, or a text bank of up to 10^6 × D) are constants, the same on every
            # process: DistributedDataParallel must not broadcast them before every step.
            self._ddp_params_and_buffers_to_ignore = [f"prior.{name}" for name, _ in prior.named_buffers()]

    def forward(self, batch: dict, beta: float = 1.0) -> tuple[torch.Tensor, dict]:
        z0 = batch["latents"]
        c = condition(self.method, batch, self.posterior, self.prior, self.lafite_xi, self.captions, self.posterior_samples)
        draws = c.t.shape[0] // z0.shape[0]
        # Classifier-free guidance: the null embedding replaces t with probability p_uncond.
        drop = torch.rand(z0.shape[0], device=z0.device) < self.p_uncond
        # The draws of one image share its dropout, noise and timestep: their losses differ only by t.
        noise = sample_noise(z0, self.noise_offset).repeat(draws, 1, 1, 1)
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (z0.shape[0],), device=z0.device).repeat(draws)
        t = torch.where(drop.repeat(draws)[:, None], self.null_embedding.to(c.t.dtype), c.t)
        l_rows = diffusion_loss(self.unet, self.scheduler, z0.repeat(draws, 1, 1, 1), t, self.snr_gamma, timesteps=timesteps, noise=noise)
        l_diff = l_rows.mean()
        n_latent = z0[0].numel()
        kl, caption_nll = c.kl.mean(), c.caption_nll.mean()
        loss = l_diff + (beta * kl + self.caption_weight * caption_nll) / n_latent
        logs = {"loss": loss.detach(), "diffusion": l_diff.detach(), "kl": kl.detach(), "beta": beta, **c.stats}
        if c.log_q is not None:
            # ∇_w E_w[L] = E[(L - b) ∇ log w_j] with b the mean loss of the image's other draws (RLOO):
            # unbiased, and low-variance because the draws share noise and timestep. Zero in value.
            l_draws = l_rows.detach().view(draws, -1)
            advantage = l_draws - (l_draws.sum(0) - l_draws) / (draws - 1)
            score = (advantage * c.log_q.view(draws, -1)).mean()
            loss = loss + score - score.detach()
        return loss, logs
