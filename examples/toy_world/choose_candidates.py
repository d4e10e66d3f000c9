"""Could a posterior that chooses among the text bank's candidates reach supervised's position? A two-stage test.

    python examples/toy_world/choose_candidates.py --run RUN --cache RUN_CACHE_FOLDER --into NEW_CACHE_FOLDER --keep_mentions
    python examples/toy_world/choose_candidates.py --run RUN --cache RUN_CACHE_FOLDER --truth_of RUN/e_step/choice-step003125.npy

The ground truth (``candidate_losses.py``) says that a trained text-bank run's UNet, scoring each image's
candidates by their diffusion loss at the steps that decide the layout (s ≥ 800), picks the right position
94 % of the time, where the prior's draws are right 82 % of the time; but a posterior trained jointly with
the UNet either stays on its prior (β = 1) or collapses onto the candidates that name the most and drifts
(docs/text_bank.md). This script takes the choice out of the joint training, as one EM step:

- E-step (here): for every image of ``RUN``'s embedding cache, the run's UNet scores the prior's ``--k``
  most probable candidates over ``--draws`` (timestep ≥ ``--min_timestep``, noise) draws shared by all
  of them, and the candidate weights become ``w ∝ π exp(-n_latent · L / β)``. With ``--keep_mentions``
  the choice is made among candidates that name as many attributes (a property of the text alone, read
  by the toy world's caption parser), each group keeping the prior's mass, so the posterior may change
  what the conditions say but not how much: the mention habit belongs to caption writers, not images.
- M-step (train.py): ``log w`` replaces the prior's logits in the top-k file of ``NEW_CACHE_FOLDER``, a
  cache of the same images and prior that train.py built in an ``--embedding_cache_dir`` of the M-step's
  own (one step of ``train.py --method prior-sample --prior text-bank --embedding_cache_dir DIR`` builds
  it), so that ``train.py --method prior-sample --prior text-bank --embedding_cache_dir DIR`` then trains a
  UNet on draws from ``w``. Rows are matched by image; no other run should read that folder.

The E-step is the library's (`vdl_diffusion.e_step`), which train.py also makes inside one run
(``--e_step_at``: the same UNet then goes on training on ``w``), or in two (``--stop_after_e_step``, then
``--bank_choice``, which reads a choice file instead of a patched cache); here it sits between two runs, and
the M-step trains a fresh UNet. Either departs from the ELBO (a band of timesteps, a frozen judge).
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DConditionModel
from posterior_report import load_run
from safetensors import safe_open

from vdl_diffusion.cache import CachedEmbeddingDataset
from vdl_diffusion.e_step import e_step
from vdl_diffusion.files import write_atomically
from vdl_diffusion.models import build_noise_scheduler
from vdl_diffusion.text_bank import BankCandidates
from vdl_diffusion.toy import ATTRIBUTE_NAMES, ATTRIBUTES, ToyWorld


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a train.py output folder trained with --prior text-bank")
    parser.add_argument("--cache", type=Path, required=True, help="the run's cache folder (holds shard-*.safetensors and bank-top*.npy)")
    parser.add_argument("--into", type=Path, help="the M-step's cache folder, whose top-k file takes the chosen weights")
    parser.add_argument(
        "--truth_of", type=Path,
        help="instead of an E-step: the ground truth of a choice already made, e.g. RUN/e_step/choice-step*.npy of a train.py --e_step_at "
        "run, or 'posterior': the run's trained bank-mixture posterior's weights, on the prior's weights as the cache holds them",
    )
    parser.add_argument("--k", type=int, default=8, help="candidates scored per image (the prior's most probable)")
    parser.add_argument("--draws", type=int, default=4, help="(timestep, noise) draws per image, shared by its candidates")
    parser.add_argument("--min_timestep", type=int, default=800, help="draws from the timesteps >= this")
    parser.add_argument("--beta", type=float, default=0.05, help="β of w ∝ π exp(-n_latent L / β); inf: w = π over the k (the control)")
    parser.add_argument("--keep_mentions", action="store_true", help="choose among candidates naming as many attributes")
    parser.add_argument("--seed", type=int, default=0, help="world seed")
    parser.add_argument("--batch_images", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if (args.into is None) == (args.truth_of is None):
        parser.error("give --into (make an E-step) or --truth_of (report on a choice already made)")
    return args


@torch.no_grad()
def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(args.seed)
    posterior, prior, texts = load_run(args.run, args.seed)
    if texts is None:
        raise SystemExit(f"{args.run} was not trained with a text-bank prior whose texts this script can read.")
    training_args = json.loads((args.run / "training_args.json").read_text())
    unet = UNet2DConditionModel.from_pretrained(args.run / "unet").eval()
    scheduler = build_noise_scheduler(training_args["prediction_type"])
    snr_gamma = training_args["snr_gamma"] or None
    read = [ToyWorld.read_caption(text) for text in texts]  # what each bank text says, by attribute
    mentions = torch.tensor([len(values) for values in read])

    (top_k_file,) = args.cache.glob("bank-top*.npy")
    images = image_order(args.cache)  # train.py's toy training split, whose labels the world redraws
    labels = ToyWorld(args.seed).sample_labels(len(images), "train")
    if args.truth_of:
        rows = np.load(top_k_file, mmap_mode="r")
        if str(args.truth_of) == "posterior":
            chosen = posterior_weights(posterior, prior, BankCandidates(CachedEmbeddingDataset(args.cache), top_k_file), args.batch_images)
        else:
            choice = np.load(args.truth_of)
            if not np.array_equal(choice["index"], rows["index"]):
                raise SystemExit(f"{args.truth_of} lists other candidates than {top_k_file}: not a choice for this cache.")
            chosen = choice["logit"]
        report = {name: truth(logits, rows["index"], images, labels, read) for name, logits in (("prior", rows["logit"]), ("chosen", chosen))}
        print(json.dumps(report, indent=1))
        return
    if args.into.resolve() == args.cache.resolve() or not (args.into / top_k_file.name).is_file():
        raise SystemExit(f"--into must be another cache folder of the same images and prior, holding {top_k_file.name}.")
    dataset = BankCandidates(CachedEmbeddingDataset(args.cache), top_k_file)
    rows = dataset.candidate_rows()
    k = min(args.k, rows.shape[1])
    log_w_rows = e_step(
        unet, scheduler, dataset, prior.bank, list(range(len(dataset))), k=k, draws=args.draws, min_timestep=args.min_timestep,
        beta=args.beta, groups=mentions if args.keep_mentions else None, snr_gamma=snr_gamma, batch_images=args.batch_images,
        generator=generator,
    )
    w, pi = np.exp(log_w_rows[:, :k]), torch.softmax(torch.from_numpy(rows["logit"][:, :k].copy()), -1).numpy()
    named = mentions.numpy()[rows["index"][:, :k]]
    chosen = {
        "mentions, prior": float((pi * named).sum(-1).mean()), "mentions, chosen": float((w * named).sum(-1).mean()),
        "kl": float((w * (log_w_rows[:, :k] - np.log(pi))).sum(-1).mean()),
    }
    write_into(args.into / top_k_file.name, log_w_rows, rows["index"], images, image_order(args.into))
    summary = dict(chosen)
    # The ground truth of what each set of weights would train on.
    top_k_logits = np.where(np.arange(rows.shape[1]) < k, rows["logit"], -1e4)
    for name, logits in (("prior", rows["logit"]), (f"prior's top {k}", top_k_logits), ("chosen", log_w_rows)):
        summary[f"truth: {name}"] = truth(logits, rows["index"], images, labels, read)
    summary |= {key: str(value) for key, value in vars(args).items()}
    (args.into / "choice.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


def truth(logits: np.ndarray, entries: np.ndarray, images: np.ndarray, labels: dict, read: list[dict]) -> dict:
    """Over one draw of each image's candidates from ``softmax(logits)``: how often a named position is right,
    how often the candidate is entirely true of the image, how many attributes it names (``read``: each
    bank text's attributes, `ToyWorld.read_caption`), how often it names each attribute and, for the images
    whose condition leaves an attribute unnamed, the total-variation distance of their values of it from the
    data's, and how often it is named for each of its values. Caption writers name an attribute whatever its
    value (distance 0): a choice that names some values more readily teaches the UNet a biased image for the
    captions that name none. Per text, the same distance among the images each text silent on an attribute is
    drawn for ("per text", weighted by the text's use): what the UNet learns to draw for that text, which a
    choice can tie to image values without naming them. (Texts drawn for few images read high by chance alone;
    compare choices over the same candidates.)"""
    w = torch.softmax(torch.tensor(logits, dtype=torch.float32), -1).numpy()
    per_text = {a: np.zeros((len(read), len(ATTRIBUTES[a]))) for a in ATTRIBUTE_NAMES}
    named_position = right_position = entirely = named = 0.0
    names = dict.fromkeys(ATTRIBUTE_NAMES, 0.0)
    unnamed = {a: np.zeros(len(ATTRIBUTES[a])) for a in ATTRIBUTE_NAMES}  # weight of each value among unnamed
    for row, image in enumerate(images):
        for j in np.flatnonzero(w[row] > 1e-6):
            values = read[entries[row, j]]
            right = {a: v == labels[a][image] for a, v in values.items()}
            named += w[row, j] * len(values)
            entirely += w[row, j] * all(right.values())
            for a in ATTRIBUTE_NAMES:
                if a in values:
                    names[a] += w[row, j]
                else:
                    unnamed[a][labels[a][image]] += w[row, j]
                    per_text[a][entries[row, j], labels[a][image]] += w[row, j]
            if "position" in right:
                named_position += w[row, j]
                right_position += w[row, j] * right["position"]
    count = {a: np.bincount(labels[a][images], minlength=len(ATTRIBUTES[a])) for a in ATTRIBUTE_NAMES}
    data = {a: c / len(images) for a, c in count.items()}
    return {
        "position": float(right_position / named_position), "entirely true": float(entirely / len(images)),
        "attributes named": float(named / len(images)), **{f"names {a}": float(n / len(images)) for a, n in names.items()},
        **{f"unnamed {a}: TV from data": float(0.5 * np.abs(unnamed[a] / unnamed[a].sum() - data[a]).sum()) for a in ATTRIBUTE_NAMES},
        **{f"unnamed {a}: TV from data per text": per_text_distance(per_text[a], data[a]) for a in ATTRIBUTE_NAMES},
        **{f"names {a}, by the image's {a}": dict(zip(ATTRIBUTES[a], (1 - unnamed[a] / count[a]).round(3).tolist())) for a in ATTRIBUTE_NAMES},
    }


def per_text_distance(mass: np.ndarray, data: np.ndarray) -> float:
    """The total-variation distance of each text's values (rows of ``mass``, by value) from ``data``'s, averaged
    over the texts by their mass."""
    total = mass.sum(-1)
    used = total > 0
    distance = 0.5 * np.abs(mass[used] / total[used, None] - data).sum(-1)
    return float((distance * total[used]).sum() / total[used].sum())


def posterior_weights(posterior, prior, dataset: BankCandidates, batch_images: int) -> np.ndarray:
    """``log w`` (N, k) of a trained bank-mixture posterior for every cached image, as train.py draws them."""
    rows, log_w = dataset.candidate_rows(), []
    for start in range(0, len(dataset), batch_images):
        batch = dataset.dataset.__getitems__(list(range(start, min(start + batch_images, len(dataset)))))
        y, features = (torch.stack([row[key] for row in batch]).float() if key in batch[0] else None for key in ("y", "features"))
        part = rows[start : start + len(batch)]
        p = prior(y, torch.from_numpy(part["index"].astype(np.int64)), torch.from_numpy(part["logit"].copy()))
        log_w.append(torch.log_softmax(posterior(y, features, p).mixture_distribution.logits, -1))
    return torch.cat(log_w).numpy()


def image_order(folder: Path) -> np.ndarray:
    """The image index of each row of a cache folder."""
    shards = json.loads((folder / "metadata.json").read_text())["shards"]
    return np.concatenate([safe_open(folder / shard, "np").get_tensor("index") for shard in shards])


def write_into(path: Path, logits: np.ndarray, entries: np.ndarray, source_images: np.ndarray, target_images: np.ndarray) -> None:
    """Writes ``logits`` (rows of the source cache) into the top-k file at ``path``, row by image, replacing
    the file whole (`write_atomically`): a killed run leaves the old one."""
    row_of = np.empty(len(source_images), dtype=np.int64)
    row_of[source_images] = np.arange(len(source_images))
    rows = np.load(path)
    order = row_of[target_images]
    if not (entries[order] == rows["index"]).all():
        raise SystemExit(f"{path} lists other candidates than the run's cache: not the same images and prior.")
    rows["logit"] = logits[order]

    def write(temporary: str) -> None:
        with open(temporary, "wb") as file:
            np.save(file, rows)

    write_atomically(path, write)


if __name__ == "__main__":
    main()
