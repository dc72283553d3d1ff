"""A CLIP tokenizer that needs no download, for the tiny presets.

Real presets ship their own ``tokenizer/`` folders and load those. Tiny presets
have random text encoders, so any vocabulary works as long as it is fixed; a
byte-level one is the smallest that encodes every string: the 256 byte symbols
of GPT-2's ``bytes_to_unicode``, each again with the end-of-word marker
``</w>``, plus ``<|startoftext|>`` and ``<|endoftext|>`` (514 entries), and no
BPE merges. Every prompt then tokenizes to one id per byte, which keeps the
tokenizer's behaviour obvious and identical on every machine.
"""

from __future__ import annotations

import functools

from transformers import CLIPTokenizer

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
VOCAB_SIZE = 514
BOS_TOKEN_ID = 512
EOS_TOKEN_ID = 513  # also the pad id, as in OpenAI's CLIP
MAX_LENGTH = 77  # CLIP's context length; text encoders get max_position_embeddings=77


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character table (also used by CLIP)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def byte_level_vocab() -> dict[str, int]:
    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": 256 + i for i, s in enumerate(symbols)})
    vocab[BOS_TOKEN] = BOS_TOKEN_ID
    vocab[EOS_TOKEN] = EOS_TOKEN_ID
    return vocab


def byte_level_clip_tokenizer() -> CLIPTokenizer:
    """A working ``CLIPTokenizer`` over the byte-level vocabulary (no files, no network)."""
    tokenizer = CLIPTokenizer(
        vocab=byte_level_vocab(),
        merges=[],
        unk_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
    )
    tokenizer.model_max_length = MAX_LENGTH
    return tokenizer
