"""Prints the statistics of the toy world's shipped models (they go to the README).

    python examples/toy_world/report.py                       # the shipped weights
    python examples/toy_world/report.py --clip /tmp/clip --n 4096

CLIP: matched image–caption cosine, modality gap ||mean image emb − mean text emb|| (normalised
embeddings), text→image top-1 among 256 (exact image, and an image that agrees with everything the
caption says), per-attribute zero-shot accuracy, and per attribute a linear probe on the image
embeddings (what they carry, whatever the prompts). VAE: reconstruction MSE/PSNR and the oracle's
accuracy on reconstructions. Oracle: accuracy per attribute on held-out world images, and the FD of real
images against real images at the benchmark's size (the floor under a model's oracle FD).
"""

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizerFast

from vdl_diffusion.evaluation import frechet_distance
from vdl_diffusion.toy import ATTRIBUTE_NAMES, TOY_CLIP, TOY_ORACLE, TOY_VAE, ToyOracle, ToyWorld

REPORT_STREAM = 7  # "eval" split stream the report reads


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", type=Path, default=TOY_CLIP, help="CLIP folder (save_pretrained)")
    parser.add_argument("--vae", type=Path, default=TOY_VAE, help="AutoencoderKL folder")
    parser.add_argument("--oracle", type=Path, default=TOY_ORACLE, help="ToyOracle folder")
    parser.add_argument("--only", choices=["clip", "vae", "oracle"], default=None, help="report one model only")
    parser.add_argument("--n", type=int, default=4096, help="evaluation images")
    parser.add_argument("--seed", type=int, default=0, help="world seed")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return parser.parse_args()


class ClipEncoder:
    """The saved CLIP with its tokenizer and processor: L2-normalised image and text embeddings."""

    def __init__(self, clip_dir):
        self.model = CLIPModel.from_pretrained(clip_dir).eval()
        self.tokenizer = CLIPTokenizerFast.from_pretrained(clip_dir)
        self.processor = CLIPImageProcessor.from_pretrained(clip_dir)

    @torch.no_grad()
    def images(self, images: np.ndarray, batch_size: int = 512) -> torch.Tensor:
        chunks = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
        pixels = [self.processor(images=list(c), return_tensors="pt").pixel_values for c in chunks]
        return F.normalize(torch.cat([_tensor(self.model.get_image_features(pixel_values=p)) for p in pixels]), dim=-1)

    @torch.no_grad()
    def texts(self, texts: list[str], batch_size: int = 512) -> torch.Tensor:
        chunks = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
        tokens = [self.tokenizer(c, padding=True, return_tensors="pt") for c in chunks]
        return F.normalize(torch.cat([_tensor(self.model.get_text_features(**t)) for t in tokens]), dim=-1)


def _tensor(features) -> torch.Tensor:
    # get_*_features returns a tensor in transformers 4 and an output with pooler_output in 5.
    return features if torch.is_tensor(features) else features.pooler_output


def clip_statistics(clip_dir, world: ToyWorld, n: int) -> dict[str, float]:
    clip = ClipEncoder(clip_dir)
    batch = world.sample(n, "eval", rng=REPORT_STREAM)
    y, t = clip.images(batch.images), clip.texts(batch.captions)
    stats = {
        "matched cosine": (y * t).sum(-1).mean().item(),
        "unmatched cosine": (y @ t.T).mean().item(),
        "gap norm": (y.mean(0) - t.mean(0)).norm().item(),
        "image cone |mean|": y.mean(0).norm().item(),
        "text cone |mean|": t.mean(0).norm().item(),
    }
    # Text→image retrieval in groups of 256: the exact image, or one the caption describes as well.
    exact, consistent = [], []
    for start in range(0, n - 255, 256):
        rows = slice(start, start + 256)
        best = (t[rows] @ y[rows].T).argmax(-1).numpy() + start
        own = np.arange(start, start + 256)
        exact.append(best == own)
        agrees = np.ones(256, dtype=bool)
        for a in ATTRIBUTE_NAMES:
            agrees &= ~batch.mentioned[a][own] | (batch.labels[a][best] == batch.labels[a][own])
        consistent.append(agrees)
    stats["text->image top-1 /256"] = np.concatenate(exact).mean()
    stats["text->image top-1 /256 (agrees with caption)"] = np.concatenate(consistent).mean()
    # Zero-shot: each value's prompts averaged into one class embedding, as in CLIP's ImageNet eval.
    for a in ATTRIBUTE_NAMES:
        classes = F.normalize(torch.stack([clip.texts(group).mean(0) for group in world.zero_shot_prompts(a)]), dim=-1)
        stats[f"zero-shot {a}"] = ((y @ classes.T).argmax(-1).numpy() == batch.labels[a]).mean()
    # What the image embedding carries at all, prompts aside: a linear probe fit on half, tested on the rest.
    for a in ATTRIBUTE_NAMES:
        stats[f"linear probe on y: {a}"] = linear_probe_accuracy(y, torch.from_numpy(batch.labels[a]))
    return stats


def linear_probe_accuracy(features: torch.Tensor, labels: torch.Tensor, steps: int = 300) -> float:
    """Test accuracy of a softmax classifier trained on the first half of ``features`` (full batch, Adam)."""
    half = len(labels) // 2
    weight = torch.zeros(features.shape[1], int(labels.max()) + 1, requires_grad=True)
    bias = torch.zeros(weight.shape[1], requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(10 * features[:half] @ weight + bias, labels[:half]).backward()
        optimizer.step()
    return ((features[half:] @ weight + bias).argmax(-1) == labels[half:]).float().mean().item()


@torch.no_grad()
def oracle_accuracy(oracle: ToyOracle, pixels: torch.Tensor, labels: dict[str, np.ndarray]) -> dict[str, float]:
    predicted = {a: torch.cat([oracle.classify(p)[a] for p in pixels.split(512)]) for a in ATTRIBUTE_NAMES}
    return {f"oracle accuracy {a}": (predicted[a].numpy() == labels[a]).mean() for a in ATTRIBUTE_NAMES}


@torch.no_grad()
def oracle_statistics(oracle_dir, world: ToyWorld, n: int, fd_samples: int = 256) -> dict[str, float]:
    """Accuracy, and the oracle FD of real images against other real images at the benchmark's size (256 per
    sampling seed): the floor under every model's FD, since a Fréchet distance from a few hundred samples is
    biased upwards."""
    oracle = ToyOracle.from_pretrained(oracle_dir).eval()
    batch = world.sample(n, "eval", rng=REPORT_STREAM)
    pixels = ToyOracle.to_pixels(batch.images)
    stats = oracle_accuracy(oracle, pixels, batch.labels)
    features = torch.cat([oracle.features(p) for p in pixels.split(512)]).split(fd_samples)
    floor = [frechet_distance(a, b) for a, b in zip(features[0:-1:2], features[1::2]) if len(b) == fd_samples]
    stats[f"FD real vs real, {fd_samples} each (mean of {len(floor)})"] = float(np.mean(floor))
    stats[f"FD real vs real, {fd_samples} each (std)"] = float(np.std(floor, ddof=1))
    return stats


@torch.no_grad()
def vae_statistics(vae_dir, oracle_dir, world: ToyWorld, n: int) -> dict[str, float]:
    vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    oracle = ToyOracle.from_pretrained(oracle_dir).eval()
    batch = world.sample(n, "eval", rng=REPORT_STREAM)
    x = ToyOracle.to_pixels(batch.images)
    reconstruction = torch.cat([vae.decode(vae.encode(c).latent_dist.mode()).sample for c in x.split(256)]).clamp(-1, 1)
    mse = ((reconstruction - x) ** 2).mean().item()  # on [-1, 1]
    latents = torch.cat([vae.encode(c).latent_dist.sample() for c in x[:1024].split(256)]) * vae.config.scaling_factor
    stats = {
        "MSE (pixels in [-1, 1])": mse,
        "PSNR (dB)": 10 * np.log10(4.0 / mse),
        "scaling_factor": vae.config.scaling_factor,
        "std of scaled latents": latents.std().item(),
    }
    # Reconstructions are quantised to uint8 first, exactly as a saved image would be.
    quantised = ToyOracle.to_pixels(((reconstruction + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    stats.update({k.replace("oracle", "oracle on reconstructions,"): v for k, v in oracle_accuracy(oracle, quantised, batch.labels).items()})
    return stats


def print_section(title: str, stats: dict[str, float]):
    print(f"\n{title}")
    for key, value in stats.items():
        print(f"  {key:<48s} {value:.4f}")


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    world = ToyWorld(args.seed)
    if args.only in (None, "clip"):
        print_section(f"CLIP ({args.clip}, {args.n} eval pairs)", clip_statistics(args.clip, world, args.n))
    if args.only in (None, "vae"):
        print_section(f"VAE ({args.vae}, {args.n} eval images)", vae_statistics(args.vae, args.oracle, world, args.n))
    if args.only in (None, "oracle"):
        print_section(f"Oracle ({args.oracle}, {args.n} eval images)", oracle_statistics(args.oracle, world, args.n))


if __name__ == "__main__":
    main()
