"""Instruction tokenizers for the reference family: a real byte-level BPE (Hugging Face
`tokenizers`) with 256 action tokens on the last vocabulary ids, as OpenVLA places them.

The tokenizer is trained once from instruction text and saved with the checkpoint as
`tokenizer.json`; loading never needs the training corpus again.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
N_ACTION_BINS = 256


class InstructionTokenizer:
    """Thin wrapper over a `tokenizers.Tokenizer` that knows BOS/PAD and the action-token range."""

    def __init__(self, tok):
        self.tok = tok
        self.pad_id = tok.token_to_id("<pad>")
        self.bos_id = tok.token_to_id("<s>")
        self.eos_id = tok.token_to_id("</s>")
        first = tok.token_to_id("<act_0>")
        if None in (self.pad_id, self.bos_id, first):
            raise ValueError("tokenizer lacks <pad>, <s> or <act_0>")
        self.vocab_size = tok.get_vocab_size()
        self.action_token_start = first
        if first + N_ACTION_BINS != self.vocab_size:
            raise ValueError("action tokens must occupy the last 256 vocabulary ids")

    @classmethod
    def train(cls, texts: list[str], vocab_size: int = 512) -> "InstructionTokenizer":
        """Train a byte-level BPE on `texts`, then append the 256 action tokens."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        tok.add_special_tokens([f"<act_{i}>" for i in range(N_ACTION_BINS)])
        return cls(tok)

    @classmethod
    def from_file(cls, path: str | Path) -> "InstructionTokenizer":
        from tokenizers import Tokenizer

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(path, "tokenizer file not found")
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as e:
            raise CheckpointError(path, f"not a valid tokenizer: {e}") from None

    def save(self, path: str | Path) -> None:
        from ..fileio import write_text

        write_text(path, self.tok.to_str(pretty=False))

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no BOS: the model inserts BOS and the image before the text)."""
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)
