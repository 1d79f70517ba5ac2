"""A CLIP BPE tokenizer for the world, written from scratch (no hub download).

Byte-level characters (with and without the ``</w>`` end-of-word marker, as in CLIP) keep it
total over any text; whole-word merges make every world word a single token, so the tiny text
encoder sees "star" as one symbol rather than four. Files are the standard ``vocab.json`` /
``merges.txt`` pair, loaded with ``CLIPTokenizer.from_pretrained(dir)`` — in transformers 5
the constructor silently ignores ``vocab_file=``, so callers must check ``len(tokenizer)``.
"""
from __future__ import annotations

import json
from pathlib import Path

from engines.world.generator import world_words

MAX_LENGTH = 40  # tokens incl. BOS/EOS; the longest two-object captions use ~34
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible byte -> printable unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def _bpe(word: tuple[str, ...], ranks: dict[tuple[str, str], int]) -> tuple[str, ...]:
    """CLIP's merge loop: repeatedly merge the lowest-ranked adjacent pair."""
    while len(word) > 1:
        pairs = [(ranks.get(p, 1 << 30), i, p) for i, p in enumerate(zip(word, word[1:]))]
        rank, _, best = min(pairs)
        if rank == 1 << 30:
            break
        out: list[str] = []
        i = 0
        while i < len(word):
            if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                out.append(word[i] + word[i + 1])
                i += 2
            else:
                out.append(word[i])
                i += 1
        word = tuple(out)
    return word


def build_merges(words: list[str]) -> list[tuple[str, str]]:
    """Merges that turn every word into one token. Each word's merges are appended after all
    earlier ones, so they never fire before an earlier word's chain completes (the earlier
    words stay single tokens)."""
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for w in words:
        sym = tuple(w[:-1]) + (w[-1] + "</w>",)
        toks = _bpe(sym, ranks)
        acc = toks[0]
        for t in toks[1:]:
            if (acc, t) not in ranks:
                ranks[(acc, t)] = len(merges)
                merges.append((acc, t))
            acc = acc + t
        assert _bpe(sym, ranks) == (w + "</w>",), w
    return merges


def write_tokenizer(out_dir: Path) -> int:
    """Write vocab.json, merges.txt and configs into ``out_dir``; returns the vocab size."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    words = world_words()
    merges = build_merges(words)
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    seen = set(vocab)
    for a, b in merges:
        if a + b not in seen:
            vocab.append(a + b)
            seen.add(a + b)
    vocab += [BOS, EOS]
    (out_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n",
                                        encoding="utf-8")
    cfg = {
        "tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_LENGTH,
        "bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS,
        "do_lower_case": True, "clean_up_tokenization_spaces": False,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    (out_dir / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}, indent=2))
    return len(vocab)


def load_tokenizer(tok_dir: Path):  # noqa: ANN201 - transformers type
    """Load with from_pretrained and check the size (guards against the 2-token fallback)."""
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    expected = len(json.loads((Path(tok_dir) / "vocab.json").read_text()))
    if len(tok) != expected:
        raise RuntimeError(f"tokenizer at {tok_dir} has {len(tok)} tokens, expected {expected}")
    return tok
