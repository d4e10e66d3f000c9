from transformers import CLIPTokenizerFast

from vdl_diffusion.tokenization import train_clip_tokenizer

CORPUS = ["a red circle on the green background", "a big blue square", "something round and small"] * 3


def test_words_of_the_corpus_are_single_tokens():
    tokenizer = train_clip_tokenizer(CORPUS)
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("A red circle, big!")["input_ids"])
    assert tokens == ["<|startoftext|>", "a</w>", "red</w>", "circle</w>", ",</w>", "big</w>", "!</w>", "<|endoftext|>"]


def test_unknown_words_fall_back_to_characters_not_to_end_of_text():
    tokenizer = train_clip_tokenizer(CORPUS)
    ids = tokenizer("zebra")["input_ids"]
    assert ids.count(tokenizer.eos_token_id) == 1 and len(ids) > 3


def test_training_is_deterministic():
    assert train_clip_tokenizer(CORPUS).get_vocab() == train_clip_tokenizer(CORPUS).get_vocab()


def test_round_trips_through_save_pretrained(tmp_path):
    tokenizer = train_clip_tokenizer(CORPUS)
    tokenizer.save_pretrained(tmp_path)
    loaded = CLIPTokenizerFast.from_pretrained(tmp_path)
    assert loaded("a red circle on zebras")["input_ids"] == tokenizer("a red circle on zebras")["input_ids"]
