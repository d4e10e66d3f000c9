"""The toy world: a procedural, captioned world of 32×32 images, so the toolkit runs offline.

Each image shows one object on a plain, softly shaded background. Its ground-truth labels are five
small categorical attributes (shape, colour, size, position, background), all learnable at 32×32.
Captions are drawn from varied templates and synonyms and, like real captions, mention only some
of what the image shows; ``mentioned`` records which attributes a caption names.

Three splits, each drawn from its own random stream so they never share an image:

- ``"clip"``: image–caption pairs that pretrain the toy CLIP;
- ``"train"``: the generator's training images (their captions exist but unsupervised training
  never reads them); about 20% of (shape, colour) combinations are held out of this split;
- ``"eval"``: evaluation captions with reference images, over all combinations, seen and unseen.
"""

import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SIZE = 32
SPLITS = ("clip", "train", "eval")

# Attribute values in label order. Every value has a canonical name (first synonym) and synonyms;
# no word is shared between attributes, so a caption's words say which attributes it mentions.
SHAPES = {
    "circle": ["circle", "disk", "dot"],
    "square": ["square", "box", "block"],
    "triangle": ["triangle", "pyramid", "wedge"],
    "cross": ["cross", "plus sign", "plus"],
    "ring": ["ring", "hoop", "donut"],
}
# "something {adjective}": how captions that leave the noun out still mention the shape.
SHAPE_ADJECTIVES = {
    "circle": ["round", "circular"],
    "square": ["square", "boxy"],
    "triangle": ["triangular", "pointy"],
    "cross": ["cross-shaped", "plus-shaped"],
    "ring": ["ring-shaped", "hollow"],
}
COLOURS = {
    "red": ["red", "crimson", "scarlet"],
    "orange": ["orange", "amber"],
    "yellow": ["yellow", "golden"],
    "green": ["green", "emerald"],
    "cyan": ["cyan", "turquoise", "aqua"],
    "blue": ["blue", "cobalt"],
    "purple": ["purple", "violet"],
    "pink": ["pink", "magenta"],
}
SIZES = {
    "small": ["small", "little", "tiny"],
    "large": ["large", "big", "huge"],
}
POSITIONS = {
    "top left": ["in the top left", "in the upper left corner", "at the top left"],
    "top right": ["in the top right", "in the upper right corner", "at the top right"],
    "bottom left": ["in the bottom left", "in the lower left corner", "at the bottom left"],
    "bottom right": ["in the bottom right", "in the lower right corner", "at the bottom right"],
}
BACKGROUNDS = {
    "black": ["black", "dark"],
    "gray": ["gray", "grey"],
    "white": ["white", "light"],
}
ATTRIBUTES = {"shape": SHAPES, "colour": COLOURS, "size": SIZES, "position": POSITIONS, "background": BACKGROUNDS}
ATTRIBUTE_NAMES = tuple(ATTRIBUTES)

COLOUR_RGB = np.array(
    [[220, 30, 30], [245, 140, 20], [240, 220, 40], [40, 180, 60],
     [40, 210, 220], [40, 70, 230], [140, 50, 200], [245, 110, 190]],
    dtype=np.float32,
)
BACKGROUND_RGB = np.array([[20, 20, 24], [120, 120, 120], [235, 235, 230]], dtype=np.float32)
# Object radius (pixels) by size label, and quadrant centres by position label (x, y).
RADIUS_RANGE = np.array([[4.2, 5.0], [6.6, 7.6]], dtype=np.float32)
QUADRANT_CENTRES = np.array([[8, 8], [24, 8], [8, 24], [24, 24]], dtype=np.float32)

# How often a caption mentions each attribute: captions leave most details out. These rates put the
# toy CLIP's matched image–caption cosine near real CLIP's (README, "The toy world").
MENTION_PROBABILITY = {"shape": 0.5, "colour": 0.5, "size": 0.3, "position": 0.6, "background": 0.2}
PREFIXES = ["", "", "a photo of ", "an image of ", "a picture of ", "there is ", "here is "]
OBJECT_NOUNS = ["object", "shape", "thing"]
# Zero-shot class prompts, CLIP-style: each names one attribute value and nothing else.
ZERO_SHOT_TEMPLATES = {
    "shape": [lambda s: _article(s), lambda s: "a photo of " + _article(s)],
    "colour": [lambda s: _article(f"{s} object"), lambda s: _article(f"{s} shape")],
    "size": [lambda s: _article(f"{s} object"), lambda s: _article(f"{s} shape")],
    "position": [lambda s: f"an object {s}", lambda s: f"a shape {s}"],
    "background": [lambda s: f"an object on a {s} background", lambda s: f"a shape against {s}"],
}

# Unpaired text corpora for the text-bank prior (ToyWorld.text_corpus): the CLIP split's captions, the
# same mismatched to the evaluation captions, or generic prompts. Their own "clip" streams, apart
# from the toy CLIP's training steps (0, 1, ...) and its tokenizer corpus (10^9).
CORPORA = ("captions", "mismatched", "generic")
CORPUS_STREAM = 2 * 10**9
MISMATCHED_MENTION_PROBABILITY = {"shape": 0.8, "colour": 0.8, "size": 0.1, "position": 0.3, "background": 0.5}
WITHHELD_TEMPLATES = re.compile(r"^(in|at) the |something |against ")


@dataclass
class ToySample:
    """A batch of the world: images, ground truth, and one caption per image."""

    images: np.ndarray  # (n, 32, 32, 3) uint8
    labels: dict[str, np.ndarray]  # attribute name -> (n,) int64
    captions: list[str]
    mentioned: dict[str, np.ndarray]  # attribute name -> (n,) bool: does the caption name it
    masks: np.ndarray  # (n, 32, 32) bool: pixels covered (at least half) by the object

    def __len__(self) -> int:
        return len(self.captions)


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _inside(shape: int, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Inside-test of one shape in coordinates normalised by the object's radius."""
    name = list(SHAPES)[shape]
    if name == "circle":
        return dx**2 + dy**2 <= 1.0
    if name == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.85
    if name == "triangle":  # apex up, base below the centre
        return (dy <= 0.8) & (np.abs(dx) <= (dy + 0.95) / 1.75)
    if name == "cross":
        return ((np.abs(dx) <= 0.33) & (np.abs(dy) <= 1.0)) | ((np.abs(dy) <= 0.33) & (np.abs(dx) <= 1.0))
    if name == "ring":
        d2 = dx**2 + dy**2
        return (d2 <= 1.0) & (d2 >= 0.36)
    raise ValueError(f"unknown shape index {shape}")


class ToyWorld:
    """The world of one ``seed``: which combinations are held out and every split's random stream.

    >>> world = ToyWorld(seed=0)
    >>> batch = world.sample(8, "train", rng=0)
    >>> batch.images.shape, batch.captions[0]  # doctest: +SKIP
    ((8, 32, 32, 3), 'a big crimson disk in the top left')
    """

    attribute_names = ATTRIBUTE_NAMES
    image_size = IMAGE_SIZE

    def __init__(self, seed: int = 0):
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.seed = int(seed)
        # Each colour is held out with one shape (8 of 40 combinations, 20%), the shapes in turn,
        # so every shape and every colour is still seen in training: only pairings are new.
        rng = np.random.default_rng((self.seed, len(SPLITS)))
        n_shapes, n_colours = len(SHAPES), len(COLOURS)
        shapes = np.concatenate([rng.permutation(n_shapes) for _ in range(-(-n_colours // n_shapes))])
        self.heldout = np.zeros((n_shapes, n_colours), dtype=bool)
        self.heldout[shapes[:n_colours], np.arange(n_colours)] = True

    def fingerprint(self) -> str:
        """A short hash of what this world draws: it changes with any change to images or captions.

        Folders written from the world (train.py's training images) carry it in their name, so
        a new version of the world never reads a folder the old one wrote.
        """
        batch = self.sample(64, "train", rng=0)
        digest = hashlib.sha256(batch.images.tobytes())
        digest.update("\n".join(batch.captions).encode())
        return digest.hexdigest()[:12]

    # -- names ---------------------------------------------------------------------------------

    @staticmethod
    def value_names(attribute: str) -> list[str]:
        """Canonical names of an attribute's values, in label order."""
        if attribute not in ATTRIBUTES:
            raise ValueError(f"attribute must be one of {ATTRIBUTE_NAMES}, got {attribute!r}")
        return list(ATTRIBUTES[attribute])

    @staticmethod
    def read_caption(caption: str) -> dict[str, int]:
        """The attributes a caption or prompt names, with their values (label indices).

        >>> ToyWorld.read_caption("a big crimson disk in the top left")
        {'shape': 0, 'colour': 0, 'size': 1, 'position': 0}

        Every word of the world belongs to one attribute value, so this inverts the captions; a
        prompt naming two values of one attribute is ambiguous and raises.
        """
        text = caption.lower()
        named = {}
        for attribute, values in ATTRIBUTES.items():
            found = [
                index
                for index, (value, synonyms) in enumerate(values.items())
                if any(re.search(rf"\b{re.escape(word)}\b", text) for word in [value, *synonyms, *SHAPE_ADJECTIVES.get(value, [])])
            ]
            if len(found) > 1:
                names = [list(values)[index] for index in found]
                raise ValueError(f"{caption!r} names {len(found)} {attribute} values ({', '.join(names)}); name at most one.")
            if found:
                named[attribute] = found[0]
        return named

    def describe(self, labels: dict[str, np.ndarray], index: int) -> str:
        """The complete ground truth of one image in words, e.g. 'large red circle, top left, on black'."""
        name = {a: self.value_names(a)[int(labels[a][index])] for a in ATTRIBUTE_NAMES}
        return f"{name['size']} {name['colour']} {name['shape']}, {name['position']}, on {name['background']}"

    def is_heldout(self, shape: np.ndarray, colour: np.ndarray) -> np.ndarray:
        """Whether each (shape, colour) pair is absent from the generator's training split."""
        return self.heldout[np.asarray(shape), np.asarray(colour)]

    # -- sampling ------------------------------------------------------------------------------

    def _rng(self, split: str, rng) -> np.random.Generator:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if isinstance(rng, np.random.Generator):
            return rng
        if rng is None or isinstance(rng, (int, np.integer)):
            # Each split has its own stream, so two splits never draw the same image.
            return np.random.default_rng((self.seed, SPLITS.index(split), 0 if rng is None else int(rng)))
        raise TypeError(f"rng must be None, an int or a numpy Generator, got {type(rng).__name__}")

    def sample_labels(self, n: int, split: str, rng=None) -> dict[str, np.ndarray]:
        """Ground-truth attributes of ``n`` images; ``"train"`` never draws a held-out combination."""
        rng = self._rng(split, rng)
        allowed = ~self.heldout if split == "train" else np.ones_like(self.heldout)
        combos = np.argwhere(allowed)
        shape, colour = combos[rng.integers(len(combos), size=n)].T
        return {
            "shape": shape.astype(np.int64),
            "colour": colour.astype(np.int64),
            "size": rng.integers(len(SIZES), size=n),
            "position": rng.integers(len(POSITIONS), size=n),
            "background": rng.integers(len(BACKGROUNDS), size=n),
        }

    def render(self, labels: dict[str, np.ndarray], rng=None, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """Draws images of ``labels`` (vectorised, 2×2 supersampled edges); returns images and masks.

        Colour, background shade, radius and position are jittered per image so no two images
        are the same and the VAE sees more than eight flat colours.
        """
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        n = len(labels["shape"])
        size = IMAGE_SIZE
        radius = rng.uniform(*RADIUS_RANGE[labels["size"]].T).astype(np.float32)
        centre = QUADRANT_CENTRES[labels["position"]] + rng.uniform(-1.0, 1.0, size=(n, 2)).astype(np.float32)
        colour = np.clip(COLOUR_RGB[labels["colour"]] + rng.uniform(-12, 12, size=(n, 3)), 0, 255)
        background = BACKGROUND_RGB[labels["background"]] + rng.uniform(-8, 8, size=(n, 3))
        gradient = rng.uniform(-10, 10, size=(n, 2)).astype(np.float32)  # shade across x and y

        sub = (np.arange(2 * size, dtype=np.float32) + 0.5) / 2  # supersampled pixel centres
        images = np.empty((n, size, size, 3), dtype=np.uint8)
        masks = np.empty((n, size, size), dtype=bool)
        ramp = np.linspace(-1, 1, size, dtype=np.float32)
        for start in range(0, n, chunk):
            idx = slice(start, min(start + chunk, n))
            r = radius[idx, None, None]
            dx, dy = np.broadcast_arrays(
                (sub[None, None, :] - centre[idx, 0, None, None]) / r,
                (sub[None, :, None] - centre[idx, 1, None, None]) / r,
            )
            inside = np.zeros(dx.shape, dtype=bool)
            for shape in np.unique(labels["shape"][idx]):
                rows = labels["shape"][idx] == shape
                inside[rows] = _inside(int(shape), dx[rows], dy[rows])
            alpha = inside.reshape(-1, size, 2, size, 2).mean(axis=(2, 4))[..., None]
            shade = gradient[idx, 0, None, None] * ramp[None, None, :] + gradient[idx, 1, None, None] * ramp[None, :, None]
            bg = background[idx, None, None, :] + shade[..., None]
            pixels = bg * (1 - alpha) + colour[idx, None, None, :] * alpha
            images[idx] = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
            masks[idx] = alpha[..., 0] >= 0.5
        return images, masks

    def caption_for(
        self, labels: dict[str, np.ndarray], rng=None, mention_probability: dict[str, float] | None = None
    ) -> tuple[list[str], dict[str, np.ndarray]]:
        """One partial caption per image and, per attribute, whether the caption mentions it.

        ``mention_probability`` overrides ``MENTION_PROBABILITY`` for the attributes it names.
        """
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        n = len(labels["shape"])
        probability = {**MENTION_PROBABILITY, **(mention_probability or {})}
        if unknown := set(probability) - set(ATTRIBUTE_NAMES):
            raise ValueError(f"mention_probability names no attribute of the world: {sorted(unknown)}; use {ATTRIBUTE_NAMES}.")
        if bad := {a: p for a, p in probability.items() if not 0 <= p <= 1}:
            raise ValueError(f"mention probabilities must lie in [0, 1], got {bad}.")
        mentioned = {a: rng.random(n) < p for a, p in probability.items()}
        # A caption always names the object by its shape or its colour.
        neither = ~(mentioned["shape"] | mentioned["colour"])
        pick_shape = rng.random(n) < 0.5
        mentioned["shape"] |= neither & pick_shape
        mentioned["colour"] |= neither & ~pick_shape
        captions = [self._caption(labels, mentioned, i, rng) for i in range(n)]
        return captions, mentioned

    def _caption(self, labels, mentioned, i: int, rng: np.random.Generator) -> str:
        def word(attribute: str, table=None) -> str:
            table = table or ATTRIBUTES[attribute]
            options = table[list(ATTRIBUTES[attribute])[int(labels[attribute][i])]]
            return options[rng.integers(len(options))]

        modifiers = [word(a) for a in ("size", "colour") if mentioned[a][i]]
        if mentioned["shape"][i] and (modifiers or rng.random() < 0.7):
            phrase = _article(" ".join(modifiers + [word("shape")]))
        elif mentioned["shape"][i]:
            phrase = "something " + word("shape", SHAPE_ADJECTIVES)
        else:
            phrase = _article(" ".join(modifiers + [OBJECT_NOUNS[rng.integers(len(OBJECT_NOUNS))]]))
        position = word("position") if mentioned["position"][i] else None
        tail = []
        if mentioned["background"][i]:
            background = word("background")
            tail.append(f"on a {background} background" if rng.random() < 0.6 else f"against {background}")
        if position is not None and rng.random() < 0.25:  # "in the top left, a red circle"
            return " ".join([position + ",", phrase] + tail)
        if position is not None:
            tail.insert(int(rng.integers(len(tail) + 1)), position)
        return PREFIXES[rng.integers(len(PREFIXES))] + " ".join([phrase] + tail)

    def sample(self, n: int, split: str, rng=None, mention_probability: dict[str, float] | None = None) -> ToySample:
        """``n`` images of ``split`` with labels, captions and mention masks.

        ``rng``: None or an int picks a stream of ``split`` (deterministic given the world's
        seed); a numpy Generator is used as it is. ``mention_probability``: see ``caption_for``.
        """
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        rng = self._rng(split, rng)
        labels = self.sample_labels(n, split, rng)
        images, masks = self.render(labels, rng)
        captions, mentioned = self.caption_for(labels, rng, mention_probability)
        return ToySample(images=images, labels=labels, captions=captions, mentioned=mentioned, masks=masks)

    # -- texts without images ------------------------------------------------------------------

    def prior_texts(self) -> list[str]:
        """Generic prompts and class names in templates, paired with no image: for the clip-gap prior."""
        templates = ["a photo of {}", "a picture of {}", "an image of {}", "{}", "a drawing of {}"]
        names = [_article(s) for s in SHAPES] + [_article(f"{c} shape") for c in COLOURS]
        names += [_article(f"{s} object") for s in SIZES] + ["an object", "a shape", "something"]
        return [template.format(name) for template in templates for name in names]

    def text_corpus(self, kind: str = "captions", n: int = 4000) -> list[str]:
        """Unpaired texts for the ``text-bank`` prior, never captions of training or evaluation images.

        - ``"captions"``: captions of ``n`` images of the CLIP split (its own stream), as a real bank
          would hold captions of other images;
        - ``"mismatched"``: the same at other mention rates (`MISMATCHED_MENTION_PROBABILITY`), with three
          caption templates withheld (position first, "something <adjective>", "against <background>");
        - ``"generic"``: the 90 generic prompts of `prior_texts` (``n`` is ignored).
        """
        if kind == "generic":
            return self.prior_texts()
        if kind not in CORPORA:
            raise ValueError(f"kind must be one of {CORPORA}, got {kind!r}")
        if not isinstance(n, (int, np.integer)) or n < 2:
            raise ValueError(f"n must be an int >= 2, got {n!r}")
        rng = self._rng("clip", CORPUS_STREAM + CORPORA.index(kind))
        if kind == "captions":
            return self.caption_for(self.sample_labels(n, "clip", rng), rng)[0]
        texts = []
        while len(texts) < n:
            captions, _ = self.caption_for(self.sample_labels(n, "clip", rng), rng, MISMATCHED_MENTION_PROBABILITY)
            texts += [caption for caption in captions if not WITHHELD_TEMPLATES.search(caption)]
        return texts[:n]

    def zero_shot_prompts(self, attribute: str) -> list[list[str]]:
        """For each value of ``attribute``, prompts naming only that value (for zero-shot accuracy)."""
        if attribute not in ATTRIBUTES:
            raise ValueError(f"attribute must be one of {ATTRIBUTE_NAMES}, got {attribute!r}")
        templates = ZERO_SHOT_TEMPLATES[attribute]
        return [[t(s) for t in templates for s in synonyms] for synonyms in ATTRIBUTES[attribute].values()]


def as_dataset(world: ToyWorld, n: int, split: str = "train", rng=None):
    """``n`` images of ``split`` as an in-memory ``datasets.Dataset``, built from the rendered arrays.

    Columns: ``image`` (an ``Image`` feature holding PNG bytes), ``text`` (the caption) and the five
    labels: the rows of `write_imagefolder`, without a file per image. ``save_to_disk`` writes it as
    one Arrow file that loads in milliseconds, where 20 000 PNG files take minutes to list and read.
    Its fingerprint hashes its contents, so a rebuild of the same world and ``n`` keeps it.
    """
    import datasets  # here, not at the top: the world itself needs only numpy and PIL
    from tqdm.auto import tqdm

    batch = world.sample(n, split, rng)
    images = [{"bytes": _png(image), "path": None} for image in tqdm(batch.images, desc=f"Encoding {split} images", unit="image")]
    features = datasets.Features(
        {"image": datasets.Image(), "text": datasets.Value("string"), **{a: datasets.Value("int64") for a in ATTRIBUTE_NAMES}}
    )
    return datasets.Dataset.from_dict({"image": images, "text": batch.captions, **batch.labels}, features=features)


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_imagefolder(world: ToyWorld, directory, n: int, split: str = "train", rng=None) -> Path:
    """Writes ``n`` images of ``split`` as PNGs with a ``metadata.jsonl`` (captions in ``text``, labels).

    The folder loads with ``datasets.load_dataset("imagefolder", data_dir=directory)``, exactly
    like a user's own image folder (the tests and examples/fault_injection.py use it so); train.py
    trains on `as_dataset` instead.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    batch = world.sample(n, split, rng)
    with open(directory / "metadata.jsonl", "w") as metadata:
        for i in range(n):
            file_name = f"{i:06d}.png"
            Image.fromarray(batch.images[i]).save(directory / file_name)
            row = {"file_name": file_name, "text": batch.captions[i]}
            row.update({a: int(batch.labels[a][i]) for a in ATTRIBUTE_NAMES})
            metadata.write(json.dumps(row) + "\n")
    return directory
