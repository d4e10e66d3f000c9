"""A CLIP tokenizer trained on a small corpus, for worlds where no pretrained one can be downloaded.

It is a real byte-pair encoding in CLIP's format (lower-cased words ending in ``</w>``, the
``<|startoftext|>`` / ``<|endoftext|>`` specials), so ``CLIPTokenizerFast.from_pretrained`` loads what
it saves and the toolkit's code path is exactly the one used with ``openai/clip-vit-*``.
"""

import json
import string
import tempfile
from itertools import chain
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import CLIPTokenizerFast

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def train_clip_tokenizer(corpus: Iterable[str], vocab_size: int = 1024) -> CLIPTokenizerFast:
    """Learns BPE merges on ``corpus`` so that every frequent word becomes one token.

    The learned ``vocab.json`` and ``merges.txt`` are loaded as a pretrained CLIP tokenizer's are, the
    one way that builds the same tokenizer in transformers 4 and 5 (``CLIPTokenizer(vocab_file=...)``
    silently builds a three-token vocabulary in 5, and ``CLIPTokenizer(vocab=...)`` is 5's alone).
    Training with ``tokenizers`` keeps merges consistent (a hand-made merge list can split words
    whose pairs were ranked for other words).
    """
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>", unk_token=EOS))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS],
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    # Every character, alone and word-final, so no input character maps to the unknown token.
    alphabet = " ".join(string.ascii_lowercase + string.digits + string.punctuation)
    bpe.train_from_iterator(chain([alphabet], (text.lower() for text in corpus)), trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    # The trainer numbers single characters in hash order; renumber so equal corpora give equal ids.
    merged = ["".join(m) for m in merges]
    characters = sorted(set(state["vocab"]) - set(merged) - {BOS, EOS})
    vocab = {token: i for i, token in enumerate(dict.fromkeys([BOS, EOS, *characters, *merged]))}
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "vocab.json").write_text(json.dumps(vocab))
        Path(folder, "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
        return CLIPTokenizerFast.from_pretrained(folder, unk_token=EOS, bos_token=BOS, eos_token=EOS, pad_token=EOS)
