"""The instruction tokenizer: BPE round trip, action tokens on the last 256 ids, persistence."""

from __future__ import annotations

import pytest

from vla_compress.errors import CheckpointError
from vla_compress.models.reference.configuration_reference import PROMPT_TEMPLATE
from vla_compress.models.tokenizer import N_ACTION_BINS, InstructionTokenizer

CORPUS = [PROMPT_TEMPLATE.format(instruction=t) for t in
          ["reach to the target location", "open the door", "push the puck to the goal", "press the button"]]


@pytest.fixture(scope="module")
def tok() -> InstructionTokenizer:
    return InstructionTokenizer.train(CORPUS, vocab_size=300)


def test_encode_decode_round_trip(tok):
    prompt = PROMPT_TEMPLATE.format(instruction="open the drawer, then close the window!")
    ids = tok.encode(prompt)
    assert ids and all(isinstance(i, int) for i in ids)
    assert tok.decode(ids) == prompt  # byte-level BPE: unseen words still round-trip exactly
    assert tok.bos_id not in ids  # the model inserts BOS itself


def test_special_and_action_tokens(tok):
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.action_token_start == tok.vocab_size - N_ACTION_BINS
    assert tok.tok.token_to_id("<act_0>") == tok.vocab_size - 256
    assert tok.tok.token_to_id("<act_255>") == tok.vocab_size - 1
    assert tok.decode([tok.action_token_start + 7]) == "<act_7>"
    # ordinary text never produces action ids
    assert max(tok.encode(CORPUS[0] + " act_0 <act")) < tok.action_token_start


def test_save_from_file_identical_ids(tok, tmp_path):
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    again = InstructionTokenizer.from_file(path)
    assert again.vocab_size == tok.vocab_size
    assert again.action_token_start == tok.action_token_start
    for text in CORPUS + ["something entirely new: 12345 ÄÖÜ"]:
        assert again.encode(text) == tok.encode(text)


def test_from_file_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="tokenizer file not found") as e:
        InstructionTokenizer.from_file(tmp_path / "missing.json")
    assert e.value.path == tmp_path / "missing.json"
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    with pytest.raises(CheckpointError, match="not a valid tokenizer") as e:
        InstructionTokenizer.from_file(bad)
    assert e.value.path == bad


def test_model_vocab_matches_tokenizer(tiny_models):
    for model in tiny_models.values():
        assert model.cfg.backbone.vocab_size == model.tokenizer.vocab_size
        assert model.tokenizer.action_token_start == model.cfg.backbone.vocab_size - model.cfg.n_bins
