"""A byte-level BPE for language models, trained offline on the corpus with HF `tokenizers`.

Byte-level: every string encodes (no unknown tokens) and decodes back exactly. Two special tokens:
`<|endoftext|>` ends each document (and pads SFT responses, as in LLaDA) and `<|mask|>` is the
masked-diffusion model's mask. The tokenizer travels with the shards as `tokenizer.json`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Iterable

import numpy as np

from infra.storage import Store

EOS, MASK = "<|endoftext|>", "<|mask|>"


class TextTokenizer:
    def __init__(self, json_text: str):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_str(json_text)
        self.json = json_text
        self.vocab_size = self._tok.get_vocab_size()
        self.eos_id = self._tok.token_to_id(EOS)
        self.mask_id = self._tok.token_to_id(MASK)
        if self.eos_id is None or self.mask_id is None:
            raise ValueError(f"tokenizer has no {EOS} or {MASK} token")

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], stop_at_eos: bool = False) -> str:
        """Text of `ids`; mask tokens show as `_`, EOS as nothing (or the end, with stop_at_eos)."""
        out: list[str] = []
        run: list[int] = []
        for i in map(int, ids):
            if i == self.eos_id and stop_at_eos:
                break
            if i in (self.eos_id, self.mask_id):
                out.append(self._tok.decode(run))
                run = []
                out.append("_" if i == self.mask_id else "")
            else:
                run.append(i)
        out.append(self._tok.decode(run))
        return "".join(out)

    def dtype(self):
        return np.uint16 if self.vocab_size <= 65536 else np.int32


def train_bpe(texts: Iterable[str], vocab_size: int) -> TextTokenizer:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, MASK],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    return TextTokenizer(tok.to_str())


@lru_cache(maxsize=4)
def load_tokenizer(uri: str) -> TextTokenizer:
    """`tokenizer.json` from a folder or S3 prefix (the shard step's output)."""

    parent, _, name = str(uri).rpartition("/")
    return TextTokenizer(Store(parent or ".").read_text(name))
