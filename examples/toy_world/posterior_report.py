"""Where each method's training conditions sit against the true text posterior, in the toy world.

    python examples/toy_world/posterior_report.py                        # 1024 training images, the default corpora
    python examples/toy_world/posterior_report.py --run outputs/vdl-toy  # and a trained run's posterior and prior

The toy world makes the true posterior observable: ``t*(x)`` is the mean direction of ``--captions``
sampled caption embeddings of each image. Per training condition (one real caption, ``y``, a
``clip`` prior sample, a ``text-bank`` prior sample per corpus, a trained run's posterior sample), over
``--n`` training images, it prints:

- ``cos t*``: cosine to ``t*(x)``; ``cos y``: cosine to the image embedding;
- ``spread``: cosine between two independent draws for the same image (1: deterministic);
- per attribute, the precision of the retrieved caption (what it names that is true of the image,
  `ToyWorld.read_caption` against the labels), and ``all true``, the share of retrieved captions
  entirely true, and ``named``, how many attributes it names. A bank sample's retrieved caption is the
  candidate it drew; for any other condition, the nearest text of the default corpus.

Encoders are train.py's (`FrozenEncoders`, the shipped toy CLIP and VAE), so ``y`` and ``h(x)`` are
those the posterior was trained on.
"""

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vdl_diffusion.encoders import FrozenEncoders
from vdl_diffusion.posterior import BankMixturePosterior, TextEmbeddingPosterior
from vdl_diffusion.priors import ClipPrior, LearnedPrior, TextBankPrior
from vdl_diffusion.text_bank import load_texts
from vdl_diffusion.toy import ATTRIBUTE_NAMES, TOY_CLIP, TOY_VAE, ToyWorld

REPORT_STREAM = 11  # "train" split stream: training-split images, not those train.py writes (stream 0)
DEFAULT_CORPORA = ["captions:4000", "captions:100", "captions:1000", "captions:10000", "mismatched:4000", "generic"]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1024, help="training images")
    parser.add_argument("--captions", type=int, default=32, help="sampled captions per image for t*(x)")
    parser.add_argument("--corpora", nargs="*", default=DEFAULT_CORPORA, help="text-bank corpora, KIND[:N] (ToyWorld.text_corpus)")
    parser.add_argument("--run", type=Path, help="a train.py output folder: its posterior/ and prior/ are reported too")
    parser.add_argument("--logit_scale", type=float, default=100.0, help="s of the clip and text-bank priors")
    parser.add_argument("--bank_concentration", type=float, help="κ_b of the text-bank priors (default: TextBankPrior's)")
    parser.add_argument("--seed", type=int, default=0, help="world seed")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return parser.parse_args()


class Report:
    """The images, their ``y``, ``h(x)``, ``t*(x)`` and labels, and the rows printed so far."""

    def __init__(self, encoders: FrozenEncoders, world: ToyWorld, n: int, captions: int, reading_bank: TextBankPrior, reading_texts):
        self.encoders, self.world = encoders, world
        batch = world.sample(n, "train", rng=REPORT_STREAM)
        self.labels = batch.labels
        pixels = torch.from_numpy(batch.images).permute(0, 3, 1, 2).float() / 127.5 - 1
        encoded = [encoders.encode_images(chunk) for chunk in pixels.split(256)]
        self.y, self.features = (torch.cat([e[key] for e in encoded]).float() for key in ("y", "features"))
        rng = np.random.default_rng((world.seed, REPORT_STREAM))
        samples = torch.stack([self.embed(world.caption_for(self.labels, rng)[0]) for _ in range(captions)], 1)
        self.t_star = F.normalize(samples.mean(1), dim=-1)
        self.caption_draws = samples[:, 0], samples[:, 1]  # two independent real captions per image
        self.reading_bank, self.reading_texts = reading_bank, reading_texts
        self.rows = []

    def embed(self, texts: list[str]) -> torch.Tensor:
        return torch.cat([self.encoders.encode_text(texts[i : i + 1024]).float() for i in range(0, len(texts), 1024)])

    def add(self, name: str, draws: tuple[torch.Tensor, torch.Tensor], retrieved: list[str] | None = None):
        """A row for a condition: two independent ``(n, D)`` draws, and the texts it retrieved (by default the nearest)."""
        t = draws[0]
        if retrieved is None:
            retrieved = [self.reading_texts[j] for j in (t @ self.reading_bank.bank.T).argmax(-1).tolist()]
        row = {
            "condition": name,
            "cos t*": (t * self.t_star).sum(-1).mean().item(),
            "cos y": (t * self.y).sum(-1).mean().item(),
            "spread": (draws[0] * draws[1]).sum(-1).mean().item(),
        }
        row.update(self.precision(retrieved))
        self.rows.append(row)

    def precision(self, texts: list[str]) -> dict[str, float]:
        """Per attribute, the share of the texts naming it that name the image's value; the share entirely
        true; and how many attributes a text names on average."""
        named, right, all_true = Counter(), Counter(), 0
        for i, text in enumerate(texts):
            values = ToyWorld.read_caption(text)
            true = {a: v == self.labels[a][i] for a, v in values.items()}
            named.update(true.keys())
            right.update(a for a, ok in true.items() if ok)
            all_true += all(true.values())
        return {
            **{a: right[a] / named[a] if named[a] else float("nan") for a in ATTRIBUTE_NAMES},
            "all true": all_true / len(texts),
            "named": sum(named.values()) / len(texts),
        }

    def print(self):
        columns = list(self.rows[0])
        print(" | ".join(f"{c:>10}" if i else f"{c:<50}" for i, c in enumerate(columns)))
        for row in self.rows:
            print(" | ".join(f"{row[c]:>10.3f}" if i else f"{row[c]:<50}" for i, c in enumerate(columns)))


def bank_draws(prior: TextBankPrior, y: torch.Tensor, p) -> tuple[tuple[torch.Tensor, torch.Tensor], list[int]]:
    """Two draws of a mixture ``p`` over ``prior``'s top-k candidates for ``y``, and the bank entry the first drew."""
    _, candidates = prior.top_k(y)
    component = p.mixture_distribution.sample()
    first = p.sample_component(component)
    return (first, p.sample()), candidates.gather(1, component[:, None]).squeeze(1).tolist()


def text_bank(texts: list[str], encoders: FrozenEncoders, args) -> tuple[TextBankPrior, list[str]]:
    prior = TextBankPrior.from_texts(texts, encoders.encode_text, logit_scale=args.logit_scale, concentration=args.bank_concentration)
    return prior, list(Counter(texts))  # the bank's rows are the distinct texts in order of appearance


def load_run(run: Path, seed: int):
    """The run's posterior and prior, and the texts of its bank when it has one."""
    classes = {cls.__name__: cls for cls in (TextEmbeddingPosterior, BankMixturePosterior, ClipPrior, LearnedPrior, TextBankPrior)}
    parts = [classes[json.loads((run / part / "config.json").read_text())["_class_name"]].from_pretrained(run / part) for part in ("posterior", "prior")]
    texts = None
    if isinstance(parts[1], TextBankPrior):
        arguments = json.loads((run / "training_args.json").read_text())
        texts = list(Counter(load_texts(arguments["prior_texts"]) if arguments.get("prior_texts") else ToyWorld(seed).text_corpus()))
        texts = texts if len(texts) == parts[1].config.num_texts else None
    return (*parts, texts)


@torch.no_grad()
def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    world = ToyWorld(args.seed)
    encoders = FrozenEncoders.from_pretrained(str(TOY_CLIP), str(TOY_VAE))
    default_bank, default_texts = text_bank(world.text_corpus(), encoders, args)
    report = Report(encoders, world, args.n, args.captions, default_bank, default_texts)
    y = report.y

    report.add("one real caption of x (supervised)", report.caption_draws)
    report.add("y (image)", (y, y))
    clip = ClipPrior(y.shape[1], args.logit_scale)(y)
    report.add(f"clip prior vMF(y, {args.logit_scale:g})", (clip.sample(), clip.sample()))
    for corpus in args.corpora:
        kind, _, n = corpus.partition(":")
        prior, texts = text_bank(world.text_corpus(kind, int(n or 4000)), encoders, args)
        draws, entries = bank_draws(prior, y, prior(y))
        report.add(f"text-bank prior, {corpus} ({len(texts)} distinct)", draws, [texts[j] for j in entries])

    if args.run:
        posterior, prior, texts = load_run(args.run, args.seed)
        p = prior(y)
        q = posterior(y, report.features, p)
        if isinstance(prior, TextBankPrior) and hasattr(q, "sample_component") and texts is not None:
            draws, entries = bank_draws(prior, y, q)
            report.add(f"run posterior ({type(posterior).__name__})", draws, [texts[j] for j in entries])
        else:
            report.add(f"run posterior ({type(posterior).__name__})", (F.normalize(q.sample(), dim=-1), F.normalize(q.sample(), dim=-1)))
        report.add("run prior sample", (p.sample(), p.sample()))
        mean = q.mean_direction if hasattr(q, "mean_direction") else F.normalize(q.mean, dim=-1)
        report.add("run posterior mean direction", (mean, mean))

    print(f"Training conditions against t*(x) ({args.captions} captions per image), {args.n} toy training images, seed {args.seed}")
    report.print()


if __name__ == "__main__":
    main()
