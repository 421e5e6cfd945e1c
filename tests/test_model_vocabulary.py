import json
from pathlib import Path

import pytest

from model.vocabulary import Vocabulary, VocabularyMismatchError, display_word

PIECES = ["<unk>", "<s>", "</s>", "▁dog", "dog", "▁Dog", "▁cat", "ing", "▁3d", "▁", "▁a", "é"]


def test_rule_keeps_lowercase_alpha_pieces_with_their_ids():
    v = Vocabulary.from_pieces(PIECES)
    assert v.token_ids.tolist() == [3, 4, 6, 7, 10]
    assert v.words == ["dog", "·dog", "cat", "·ing", "a"]
    assert len(set(v.words)) == len(v)  # word-initial and continuation never look the same


def test_lookups():
    v = Vocabulary.from_pieces(PIECES)
    assert v.index("dog") == 0 and v.index("▁dog") == 0 and v.index("·dog") == 1
    assert v.index("Cat") == 2
    assert "ing" not in v and "·ing" in v
    with pytest.raises(KeyError, match="not in the vocabulary"):
        v.index("horse")
    assert v.index_of_token(6) == 2 and v.index_of_token(5) is None
    assert v.indices_of_tokens([1, 3, 5, 7]) == [0, 3]
    assert display_word("▁sky") == "sky" and display_word("sky") == "·sky"


def test_save_load_round_trip_and_hash(tmp_path):
    v = Vocabulary.from_pieces(PIECES)
    v.save(tmp_path)
    w = Vocabulary.load(tmp_path)
    assert (
        w.hash == v.hash and w.pieces == v.pieces and w.token_ids.tolist() == v.token_ids.tolist()
    )
    other = Vocabulary.from_pieces([*PIECES, "▁bird"])
    assert other.hash != v.hash
    with pytest.raises(VocabularyMismatchError, match="mismatch"):
        v.check_matches(other, "the index", "the model")


def test_corrupt_file_is_refused(tmp_path):
    path = Vocabulary.from_pieces(PIECES).save(tmp_path)
    data = json.loads(path.read_text())
    data["pieces"][0] = "▁cow"
    path.write_text(json.dumps(data))
    with pytest.raises(VocabularyMismatchError, match="corrupt"):
        Vocabulary.load(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid vocabulary"):
        Vocabulary.load(path)


def test_real_llama2_tokenizer_gives_17234_words(llama2_tokenizer_dir):
    from transformers import LlamaTokenizer

    tok = LlamaTokenizer.from_pretrained(str(llama2_tokenizer_dir))
    v = Vocabulary.from_tokenizer(tok)
    assert len(tok) == 32000
    assert len(v) == 17234  # our lower-alpha rule (the paper's own filter, unknown, gave 17,149)
    initial = {p[1:] for p in v.pieces if p.startswith("▁")}
    continuation = {p for p in v.pieces if not p.startswith("▁")}
    assert len(initial & continuation) == 3124  # words present twice, shown distinctly
    assert v.words[v.index("dog")] == "dog" and "·dog" in v


def test_bag_of_words_row_is_the_sparse_form_of_bag_of_words(llama2_tokenizer_dir, flickr_sample):
    """The service's torch-free words-mode row: the same float32 values as ``bag_of_words``."""
    import csv

    import numpy as np
    from transformers import LlamaTokenizer

    from model.bag_of_words import bag_of_words, bag_of_words_row

    tok = LlamaTokenizer.from_pretrained(str(llama2_tokenizer_dir))
    v = Vocabulary.from_tokenizer(tok)
    with open(flickr_sample / "captions.csv", newline="") as f:
        captions = [row["caption"] for row in csv.DictReader(f)][:200]
    texts = [*captions, "Dog dog DOG cat", "", "!!! 123", "a " * 300]
    dense = bag_of_words(texts, tok, v).numpy()
    for text, expected in zip(texts, dense, strict=True):
        row = bag_of_words_row(text, tok, v)
        assert row.shape == (1, len(v)) and row.dtype == np.float32 and row.has_sorted_indices
        assert np.array_equal(row.toarray()[0], expected)
    repeated = bag_of_words_row("Dog dog DOG cat", tok, v)
    assert dict(zip(repeated.indices.tolist(), repeated.data.tolist(), strict=True)) == {
        v.index("dog"): np.float32(3) / np.sqrt(np.float32(10)),  # counts 3 and 1, norm sqrt(10)
        v.index("cat"): np.float32(1) / np.sqrt(np.float32(10)),
    }
    assert bag_of_words_row("!!! 123", tok, v).nnz == 0


def test_the_bag_of_words_function_is_not_shadowed_by_its_module():
    """``from model import bag_of_words`` after ``bag_of_words_row`` loaded the module of the
    same name (the service imports the one, training the other) is still the function."""
    import subprocess
    import sys

    code = (
        "from model import bag_of_words_row\n"
        "from model import bag_of_words\n"
        "assert callable(bag_of_words), bag_of_words\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
