"""The world's CLIP tokenizer: written from scratch, loaded with from_pretrained, size checked
(transformers 5's constructor ignores vocab_file= and yields a 2-token tokenizer)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from engines.world.generator import make_sample, world_words
from engines.world.paths import default_model_dir
from engines.world.tokenizer import MAX_LENGTH, load_tokenizer, write_tokenizer

EXPECTED_LEN = 756  # 512 byte-level symbols + whole-word merges + BOS/EOS


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    d = tmp_path_factory.mktemp("tok")
    assert write_tokenizer(d) == EXPECTED_LEN
    return load_tokenizer(d)


def test_length_via_from_pretrained(tok) -> None:  # noqa: ANN001
    from transformers import CLIPTokenizer

    assert isinstance(tok, CLIPTokenizer)
    assert len(tok) == EXPECTED_LEN
    assert tok.model_max_length == MAX_LENGTH


def test_world_words_are_single_tokens(tok) -> None:  # noqa: ANN001
    for w in world_words():
        assert len(tok(w, add_special_tokens=False).input_ids) == 1, w


def test_captions_round_trip_and_fit(tok) -> None:  # noqa: ANN001
    for i in range(200):
        cap = make_sample(8, i, p_two=0.5).caption
        ids = tok(cap).input_ids
        assert len(ids) <= MAX_LENGTH
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == cap.replace(" ", "")


def test_arbitrary_text_is_total(tok) -> None:  # noqa: ANN001
    ids = tok("Ünïcode & a purple zebra!").input_ids
    assert tok.unk_token_id not in ids[1:-1]


def test_shipped_tokenizer_matches() -> None:
    d = default_model_dir() / "tokenizer"
    tok = load_tokenizer(d)
    assert len(tok) == EXPECTED_LEN == len(json.loads((Path(d) / "vocab.json").read_text()))
