"""Does the diffusion loss tell the true candidates of the text-bank prior from the false ones?

    python examples/toy_world/candidate_losses.py --run outputs/vdl-toy            # a text-bank run
    python examples/toy_world/candidate_losses.py --run RUN --n 512 --draws 64 --k 8

The bank-mixture posterior can only learn to choose among an image's candidates what the diffusion
loss says about them. This measures it with the toy world's ground truth: for ``--n`` training
images and each image's ``--k`` most probable bank entries, the run's UNet scores every candidate
``t_j`` by its diffusion loss ``L_j`` (averaged over ``--draws`` timesteps and noises, the same draws
for all candidates of an image, so that the losses differ only by ``t_j``). The caption reader says
which candidates are true of the image. It prints:

- the loss gap between false and true candidates of the same image, and its signal-to-noise ratio
  on one draw (what one UNet pass per step gives the posterior to learn from);
- the precision (position; all attributes true) of the candidate drawn from the prior ``π``, of the
  lowest-loss candidate, and of a draw from the posterior that minimises train.py's objective
  ``E_w[L] + β KL(w || π) / n_latent``, which is ``w ∝ π exp(-n_latent L / β)``, for several β,
  with that posterior's KL. ``β = 1 / elbo_scale`` weighs the KL as the ELBO does.
"""

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from posterior_report import REPORT_STREAM, load_run

from vdl_diffusion.e_step import candidate_losses
from vdl_diffusion.encoders import FrozenEncoders
from vdl_diffusion.models import build_noise_scheduler
from vdl_diffusion.objective import elbo_scale
from vdl_diffusion.toy import TOY_CLIP, TOY_VAE, ToyWorld


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a train.py output folder trained with --prior text-bank")
    parser.add_argument("--from_saved", type=Path, help="analyse the losses an earlier run saved (OUTPUT.pt) instead of measuring")
    parser.add_argument("--n", type=int, default=256, help="training images")
    parser.add_argument("--k", type=int, default=8, help="candidates per image (the prior's most probable)")
    parser.add_argument("--draws", type=int, default=32, help="(timestep, noise) draws per image, shared by its candidates")
    parser.add_argument("--betas", type=float, nargs="*", default=[1.0, 0.05, 0.01], help="β of the optimal posteriors (1 / elbo_scale is added)")
    parser.add_argument("--seed", type=int, default=0, help="world seed")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--output", type=Path, help="also write the figures here as JSON")
    return parser.parse_args()


@torch.no_grad()
def score(unet, scheduler, z0, candidates, draws: int, snr_gamma: float | None, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(draws, n, k)`` diffusion losses and ``(draws, n)`` timesteps, over every timestep; within a draw every
    candidate of an image sees the same ``s`` and ``ε`` (`vdl_diffusion.e_step.candidate_losses`)."""
    losses, timesteps = [], []
    for _ in range(draws):
        s = torch.randint(0, scheduler.config.num_train_timesteps, (len(z0),), generator=generator)
        noise = torch.randn(z0.shape, generator=generator)
        losses.append(candidate_losses(unet, scheduler, z0, candidates, s, noise, snr_gamma))
        timesteps.append(s)
    return torch.stack(losses), torch.stack(timesteps)


def truth(world: ToyWorld, texts: list[str], labels: dict, i: int) -> tuple[bool | None, bool]:
    """Whether a candidate text states image ``i``'s position right (None: it does not name one) and is entirely true."""
    values = ToyWorld.read_caption(texts)
    right = {a: v == labels[a][i] for a, v in values.items()}
    return right.get("position"), all(right.values())


def precision(w: torch.Tensor, position: torch.Tensor, named: torch.Tensor, all_true: torch.Tensor) -> dict[str, float]:
    """Expected precision of one draw from ``w`` (n, k): position where named, and entirely true."""
    return {
        "position": ((w * position * named).sum() / (w * named).sum()).item(),
        "all true": (w * all_true).sum(-1).mean().item(),
    }


def measure(args) -> dict:
    """Every candidate's losses over the draws, with its truth: what `analyse` reads."""
    generator = torch.Generator().manual_seed(args.seed)
    world = ToyWorld(args.seed)
    encoders = FrozenEncoders.from_pretrained(str(TOY_CLIP), str(TOY_VAE))
    training_args = json.loads((args.run / "training_args.json").read_text())
    _, prior, texts = load_run(args.run, args.seed)
    if texts is None:
        raise SystemExit(f"{args.run} was not trained with a text-bank prior whose texts this script can read.")
    unet = UNet2DConditionModel.from_pretrained(args.run / "unet").eval()
    scheduler = build_noise_scheduler(training_args["prediction_type"])
    snr_gamma = training_args["snr_gamma"] or None

    batch = world.sample(args.n, "train", rng=REPORT_STREAM)
    pixels = torch.from_numpy(batch.images).permute(0, 3, 1, 2).float() / 127.5 - 1
    encoded = [encoders.encode_images(chunk) for chunk in pixels.split(256)]
    z0, y = (torch.cat([e[key] for e in encoded]).float() for key in ("latents", "y"))
    logits, index = prior.top_k(y)
    logits, index = logits[:, : args.k], index[:, : args.k]
    candidates = prior.bank[index]

    position, named, all_true, mentions = (torch.zeros(args.n, args.k) for _ in range(4))
    for i in range(args.n):
        for j, entry in enumerate(index[i].tolist()):
            right, entirely = truth(world, texts[entry], batch.labels, i)
            named[i, j], position[i, j], all_true[i, j] = right is not None, bool(right), entirely
            mentions[i, j] = len(ToyWorld.read_caption(texts[entry]))

    losses, timesteps = score(unet, scheduler, z0, candidates, args.draws, snr_gamma, generator)
    return {
        "run": str(args.run), "n_latent": z0[0].numel(), "elbo_scale": elbo_scale(unet, scheduler, z0[:32], candidates[:32, 0], snr_gamma),
        "losses": losses, "timesteps": timesteps, "log_pi": torch.log_softmax(logits, -1),
        "position": position, "named": named, "all_true": all_true, "mentions": mentions,
    }


BANDS = {"all": (0, 1000), "s < 333": (0, 333), "333 <= s < 667": (333, 667), "s >= 667": (667, 1000), "s >= 800": (800, 1000)}


def analyse(raw: dict, betas: list[float]) -> dict:
    losses, timesteps, log_pi = raw["losses"], raw["timesteps"], raw["log_pi"]
    position, named, all_true, mentions = raw["position"], raw["named"], raw["all_true"], raw["mentions"]
    draws, n, k = losses.shape

    def gap(worse: torch.Tensor, better: torch.Tensor, strata: torch.Tensor | None = None) -> dict[str, dict[str, float]]:
        """Loss of the ``worse`` candidates minus the ``better`` ones of the same image (images with both), per
        band of timesteps; with ``strata`` (a label per candidate), compared only within a stratum."""
        strata = torch.zeros_like(worse) if strata is None else strata
        per_draw, s = [], []
        for stratum in strata.unique():
            w, b = worse * (strata == stratum), better * (strata == stratum)
            both = (w.sum(-1) > 0) & (b.sum(-1) > 0)
            per_draw.append(((losses * w).sum(-1) / w.sum(-1).clamp(min=1) - (losses * b).sum(-1) / b.sum(-1).clamp(min=1))[:, both])
            s.append(timesteps[:, both])
        per_draw, s = torch.cat(per_draw, 1), torch.cat(s, 1)
        figures = {}
        for name, (low, high) in BANDS.items():
            band = (s >= low) & (s < high)
            seen = band.any(0)  # comparisons with a draw in the band
            per_image = (per_draw * band).sum(0)[seen] / band.sum(0)[seen]
            figures[name] = {"mean": per_image.mean().item(), "se": (per_image.std() / per_image.numel() ** 0.5).item(), "images": int(seen.sum())}
        return figures

    def choice(mean: torch.Tensor) -> dict:
        """Precision of the lowest-loss candidate and of the posterior minimising the objective, per β."""
        figures = {"lowest loss": precision(F.one_hot(mean.argmin(-1), k).float(), position, named, all_true)}
        for beta in [*betas, 1 / raw["elbo_scale"]]:
            w = torch.softmax(log_pi - raw["n_latent"] * mean / beta, -1)
            kl = (w * (w.clamp(min=1e-30).log() - log_pi)).sum(-1).mean().item()
            figures[f"optimal posterior, beta={beta:.4g}"] = {**precision(w, position, named, all_true), "kl": kl}
        return figures

    mixed = (all_true.sum(-1) > 0) & (all_true.sum(-1) < k)
    fewer = mentions < mentions.median(-1, keepdim=True).values
    single = losses - losses.mean(-1, keepdim=True)  # a single draw's loss around its image's mean: the noise the posterior sees
    by_band = {}
    for name, (low, high) in BANDS.items():
        band = ((timesteps >= low) & (timesteps < high)).float()[..., None]
        by_band[name] = choice((losses * band).sum(0) / band.sum(0).clamp(min=1))
    return {
        "run": raw["run"], "n": n, "k": k, "draws": draws, "n_latent": raw["n_latent"], "elbo_scale": raw["elbo_scale"],
        "images with true and false candidates": mixed.float().mean().item(),
        "loss gap, false - entirely true candidates": gap(1 - all_true, all_true),
        "loss gap, wrong - right position (candidates naming one)": gap(named * (1 - position), named * position),
        "loss gap, wrong - right position, as many attributes named": gap(named * (1 - position), named * position, mentions),
        "loss gap, fewer - more attributes named": gap(fewer.float(), (~fewer).float()),
        "loss per draw, spread across candidates of one image (std)": single.std().item(),
        "loss per draw, spread across draws (std)": losses.std(0).mean().item(),
        "prior sample": precision(log_pi.exp(), position, named, all_true),
        "prior argmax": precision(F.one_hot(log_pi.argmax(-1), k).float(), position, named, all_true),
        "choosing by the loss in a band of timesteps": by_band,
    }


def main():
    args = parse_args()
    if (args.run is None) == (args.from_saved is None):
        raise SystemExit("Pass --run (measure a trained run) or --from_saved (analyse saved losses).")
    torch.set_num_threads(args.threads)
    raw = torch.load(args.from_saved) if args.from_saved else measure(args)
    figures = analyse(raw, args.betas)
    print(json.dumps(figures, indent=2))
    if args.output:
        args.output.write_text(json.dumps(figures, indent=2) + "\n")
        if not args.from_saved:
            torch.save(raw, args.output.with_suffix(".pt"))  # every candidate's losses: rerun the analysis with --from_saved


if __name__ == "__main__":
    main()
