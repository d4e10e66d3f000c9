"""Do the posterior's gradients slow the UNet? They share train.py's clipping norm (--max_grad_norm).

    python examples/toy_world/gradient_norms.py --run RUN --cache RUN_CACHE_FOLDER --batches 8 [--fresh]

For a trained `vdl` run with the bank-mixture posterior, prints the gradient norm of the UNet and of the
posterior on a few training batches of its cache (the loss of train.py's step, β = 1), and whether the
global norm exceeds the clip. If it did, the clip would scale the UNet's step down by the posterior's share.
``--fresh``: the same on the run's models as first initialised (its configs, new weights), where the clip can bite.
"""

import argparse
import json
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from vdl_diffusion.cache import CachedEmbeddingDataset
from vdl_diffusion.models import build_noise_scheduler
from vdl_diffusion.objective import ELBO
from vdl_diffusion.posterior import BankMixturePosterior
from vdl_diffusion.priors import TextBankPrior
from vdl_diffusion.text_bank import BankCandidates


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a train.py output folder (vdl, text-bank, bank_mixture)")
    parser.add_argument("--cache", type=Path, required=True, help="its cache folder (holds bank-top*.npy)")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh", action="store_true", help="newly initialised UNet and posterior of the run's configs (step 0)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.distributions.Distribution.set_default_validate_args(False)  # as train.py
    training_args = json.loads((args.run / "training_args.json").read_text())
    if args.fresh:
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(args.run / "unet"))
        posterior = BankMixturePosterior.from_config(BankMixturePosterior.load_config(args.run / "posterior"))
    else:
        unet = UNet2DConditionModel.from_pretrained(args.run / "unet")
        posterior = BankMixturePosterior.from_pretrained(args.run / "posterior")
    prior = TextBankPrior.from_pretrained(args.run / "prior")
    (top_k_file,) = args.cache.glob("bank-top*.npy")
    dataset = BankCandidates(CachedEmbeddingDataset(args.cache), top_k_file)
    elbo = ELBO(
        unet, build_noise_scheduler(training_args["prediction_type"]), posterior=posterior, prior=prior,
        snr_gamma=training_args["snr_gamma"] or None, captions=False,
    )
    generator = torch.Generator().manual_seed(args.seed)
    for _ in range(args.batches):
        index = torch.randint(0, len(dataset), (training_args["train_batch_size"],), generator=generator).tolist()
        batch = dataset.prepare_batch(torch.utils.data.default_collate(dataset.__getitems__(index)), None)
        elbo.zero_grad()
        loss, _ = elbo(batch, beta=training_args["beta"])
        loss.backward()
        norms = [torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in part.parameters() if p.grad is not None])) for part in (unet, posterior)]
        total = torch.linalg.vector_norm(torch.stack(norms))
        print(f"UNet {norms[0]:.4f}  posterior {norms[1]:.4f}  global {total:.4f}  clipped: {bool(total > training_args['max_grad_norm'])}")


if __name__ == "__main__":
    main()
