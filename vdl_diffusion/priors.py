"""Priors ``p(t | y)`` over the hidden CLIP text embedding ``t`` given the image embedding ``y``.

On the unit sphere (METHOD.md, "Priors"), von Mises-Fisher or mixtures of them:

- ``clip``: CLIP's own conditional ``p(t | y) ∝ p(t) exp(s cos(t, y))`` with a flat text marginal,
  i.e. ``vMF(y, s)``, ``s`` the logit scale.
- ``clip-gap``: the same with a text-cone marginal ``p(t) = vMF(m_T, κ_T)``; the product of the two
  is ``vMF(normalise(s y + κ_T m_T), ||s y + κ_T m_T||)``. ``clip`` is its special case ``κ_T = 0``,
  so one class serves both.
- ``learned``: ``m, κ_p`` from a small network of ``y``, fitted by maximum likelihood on whatever
  image-caption pairs exist.
- ``text-bank``: CLIP's conditional with the empirical marginal of a bank of unpaired texts ``{t_j}``,
  ``Σ_j π_j(y) vMF(t_j, κ_b)`` with ``π_j(y) = softmax_j(s yᵀt_j)``.

Priors are diffusers ``ModelMixin``s so their parameters (``m_T``, ``κ_T`` or the network) are
saved with the trained model.
"""

import hashlib
import math
from collections import Counter
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from tqdm.auto import tqdm

from .distributions import VonMisesFisher, VonMisesFisherMixture, concentration_for_cosine
from .posterior import TextEmbeddingPosterior

PRIORS = ("clip", "clip-gap", "learned", "text-bank")
BANK_SAMPLE_COSINE = 0.99  # default κ_b: a bank sample's mean cosine to its text (see TextBankPrior)


class ClipPrior(ModelMixin, ConfigMixin):
    """``vMF(normalise(s·y + κ_T·m_T), ||s·y + κ_T·m_T||)``; ``κ_T = 0`` gives the ``clip`` prior."""

    @register_to_config
    def __init__(self, embedding_dim: int, logit_scale: float = 100.0, text_concentration: float = 0.0):
        super().__init__()
        if logit_scale <= 0:
            raise ValueError(f"`logit_scale` must be positive (CLIP's is 100), got {logit_scale}.")
        self.register_buffer("text_mean", torch.zeros(embedding_dim))

    def forward(self, y: torch.Tensor) -> VonMisesFisher:
        eta = self.config.logit_scale * y + self.config.text_concentration * self.text_mean.to(y.dtype)
        return VonMisesFisher(F.normalize(eta, dim=-1), eta.norm(dim=-1))

    @classmethod
    def from_text_cone(cls, text_mean: torch.Tensor, text_concentration: float, logit_scale: float = 100.0):
        """The ``clip-gap`` prior for a text cone ``vMF(m_T, κ_T)`` (see :func:`estimate_text_cone`)."""
        prior = cls(embedding_dim=text_mean.numel(), logit_scale=logit_scale, text_concentration=float(text_concentration))
        prior.text_mean.copy_(F.normalize(text_mean.flatten().float(), dim=0))
        return prior


def fit_von_mises_fisher(t: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Maximum-likelihood direction and (Banerjee et al. 2005) concentration of unit vectors ``t``."""
    if t.ndim != 2 or t.shape[0] < 2:
        raise ValueError(f"Need at least two embeddings as an (N, D) tensor, got shape {tuple(t.shape)}.")
    dim = t.shape[1]
    resultant = F.normalize(t.double(), dim=-1).mean(dim=0)
    r = resultant.norm().clamp(max=1 - 1e-6).item()
    return F.normalize(resultant, dim=0).float(), r * (dim - r**2) / (1 - r**2)


@torch.no_grad()
def estimate_text_cone(texts: Sequence[str], tokenizer, text_encoder, batch_size: int = 256) -> tuple[torch.Tensor, float]:
    """``m_T, κ_T`` of CLIP text embeddings of **unpaired** texts (never the training images' captions).

    ``text_encoder`` is a ``CLIPTextModelWithProjection``; any generic prompts or class names in
    templates will do.
    """
    texts = [text for text in texts if text.strip()]
    if len(texts) < 2:
        raise ValueError("`estimate_text_cone` needs at least two non-empty texts to estimate the text cone.")
    embeds = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(
            texts[start : start + batch_size],
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).to(text_encoder.device)
        embeds.append(text_encoder(**tokens).text_embeds.float().cpu())
    return fit_von_mises_fisher(torch.cat(embeds))


class LearnedPrior(ModelMixin, ConfigMixin):
    """``vMF(normalise(y + g(y)), softplus(k(y)) + κ_min)``, starting as the ``clip`` prior ``vMF(y, s)``.

    The network is the posterior's, fed ``y`` alone; only the family of the output differs.
    """

    @register_to_config
    def __init__(self, embedding_dim: int, hidden_dim: int = 512, logit_scale: float = 100.0, min_concentration: float = 1.0):
        super().__init__()
        self.net = TextEmbeddingPosterior(
            embedding_dim, hidden_dim=hidden_dim, min_concentration=min_concentration, init_concentration=logit_scale
        )

    def forward(self, y: torch.Tensor) -> VonMisesFisher:
        q = self.net(y)
        return VonMisesFisher(q.loc, q.concentration)


class TextBankPrior(ModelMixin, ConfigMixin):
    """``p(t | y) = Σ_j π_j(y) vMF(t; t_j, κ_b)``, ``π_j(y) ∝ n_j exp(s yᵀt_j)``, over a bank of unpaired texts.

    At CLIP's optimum ``exp(s yᵀt) ∝ p(t | x) / p(t)``: with the empirical marginal of the bank in
    place of a flat one, CLIP's own conditional puts the prior where text embeddings of ``x`` live.
    The bank holds each distinct text once (``bank`` (N, D)) with its count ``n_j`` (``log_count``).

    π is the softmax over the ``top_k`` entries of largest logit, not over the whole bank: exact when
    ``top_k`` ≥ N; otherwise the left-out entries, each below the k-th logit, lose their mass. The
    top-k come with the batch (precomputed once per image, `vdl_diffusion.text_bank`) or are found
    here, one (B, N) matmul per step. ``concentration`` ``κ_b`` smooths each text into a vMF; by
    default its samples sit at cosine 0.99 to their text (κ_b ≈ 3100 at D = 64, 38000 at D = 768): on
    the scale of the bank's own spacing (in the toy world a caption's nearest distinct caption sits
    at cosine 0.988 at the 10th percentile, 0.9996 at the median), far tighter than one image's
    captions about their mean direction (0.94). Measured over 1024 toy images, bank samples sit at
    cosine 0.911 / 0.929 / 0.939 to the true posterior's mean for samples at 0.97 / 0.99 / 1 to their text.
    """

    @register_to_config
    def __init__(
        self, embedding_dim: int, num_texts: int, logit_scale: float = 100.0, concentration: float | None = None, top_k: int = 64
    ):
        super().__init__()
        if logit_scale <= 0:
            raise ValueError(f"`logit_scale` must be positive (CLIP's is 100), got {logit_scale}.")
        if concentration is not None and concentration <= 0:
            raise ValueError(f"The bank's concentration κ_b must be positive, got {concentration}.")
        if top_k < 1:
            raise ValueError(f"`top_k` must be at least 1, got {top_k}.")
        self.concentration = concentration or concentration_for_cosine(embedding_dim, BANK_SAMPLE_COSINE)
        self.register_buffer("bank", torch.zeros(num_texts, embedding_dim))
        self.register_buffer("log_count", torch.zeros(num_texts))

    @classmethod
    def from_texts(
        cls, texts: Sequence[str], encode_text: Callable[[list[str]], torch.Tensor], batch_size: int = 256, **config
    ) -> "TextBankPrior":
        """The prior of ``texts`` (e.g. `load_texts`), embedded by ``encode_text`` (`FrozenEncoders.encode_text`)."""
        counts = Counter(texts)  # in order of first appearance
        if len(counts) < 2:
            raise ValueError(f"A text bank needs at least two distinct texts, got {len(counts)}.")
        distinct = list(counts)
        chunks = range(0, len(distinct), batch_size)
        bank = torch.cat([encode_text(distinct[i : i + batch_size]).float().cpu() for i in tqdm(chunks, desc="Embedding the text bank")])
        prior = cls(embedding_dim=bank.shape[1], num_texts=len(distinct), **config)
        prior.bank.copy_(F.normalize(bank, dim=-1))
        prior.log_count.copy_(torch.tensor([math.log(counts[text]) for text in distinct]))
        return prior

    def forward(self, y: torch.Tensor, bank_index: torch.Tensor | None = None, bank_logits: torch.Tensor | None = None) -> VonMisesFisherMixture:
        """The prior of each row of ``y`` over its top-k entries: given (``bank_index``, ``bank_logits``), or found here."""
        if bank_index is None:
            bank_logits, bank_index = self.top_k(y)
        loc = self.bank[bank_index.long()].to(y.dtype)
        concentration = torch.full(bank_index.shape, self.concentration, dtype=y.dtype, device=y.device)
        return VonMisesFisherMixture(bank_logits.to(y.dtype), VonMisesFisher(loc, concentration))

    def top_k(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``top_k`` largest logits ``s yᵀt_j + log n_j`` of each row of ``y``, sorted, and their bank indices."""
        return bank_top_k(y, self.bank, self.log_count, self.config.logit_scale, self.config.top_k)

    def fingerprint(self) -> str:
        """A hash of everything that decides the top-k: bank, counts, logit scale and k."""
        digest = hashlib.sha256(f"{self.config.logit_scale}:{self.config.top_k}".encode())
        for tensor in (self.bank, self.log_count):
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]


@torch.no_grad()
def bank_top_k(
    y: torch.Tensor, bank: torch.Tensor, log_count: torch.Tensor, logit_scale: float, k: int, max_scores: int = 2**25
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest ``logit_scale · yᵀt_j + log n_j`` per row of ``y`` (sorted, float32) and their indices j.

    Over the bank in chunks of ``max_scores / len(y)`` entries, so memory stays at ``max_scores``
    scores (128 MiB) whatever the bank's size; on ``y``'s device.
    """
    chunk = max(k, max_scores // max(1, y.shape[0]))
    best_logits = torch.empty(y.shape[0], 0, device=y.device)
    best_index = torch.empty(y.shape[0], 0, dtype=torch.long, device=y.device)
    for start in range(0, bank.shape[0], chunk):
        entries = bank[start : start + chunk].to(y.device, torch.float32)
        log_counts = log_count[start : start + chunk].to(y.device, torch.float32)
        logits = torch.addmm(log_counts, y.float(), entries.T, alpha=logit_scale)  # one B × chunk buffer
        logits, index = logits.topk(min(k, logits.shape[1]), dim=1)
        best_logits, position = torch.cat([best_logits, logits], 1).topk(min(k, best_logits.shape[1] + logits.shape[1]), dim=1)
        best_index = torch.gather(torch.cat([best_index, index + start], 1), 1, position)
    return best_logits, best_index


def build_prior(name: str, embedding_dim: int, logit_scale: float = 100.0, text_cone=None) -> nn.Module:
    """The prior named on the command line; ``clip-gap`` needs ``text_cone = (m_T, κ_T)``;
    ``text-bank`` is built from its texts (`TextBankPrior.from_texts`)."""
    if name == "clip":
        return ClipPrior(embedding_dim, logit_scale)
    if name == "clip-gap":
        if text_cone is None:
            raise ValueError("The `clip-gap` prior needs the text cone (m_T, κ_T): pass unpaired texts (`--prior_texts`).")
        return ClipPrior.from_text_cone(*text_cone, logit_scale=logit_scale)
    if name == "learned":
        return LearnedPrior(embedding_dim, logit_scale=logit_scale)
    if name == "text-bank":
        raise ValueError("The `text-bank` prior is built from its texts: use `TextBankPrior.from_texts` (`--prior_texts`).")
    raise ValueError(f"Unknown prior {name!r}; choose one of {PRIORS}.")
