"""Character-level text from the Python standard library's own source.

The corpus is the `.py` files at the top level of the running interpreter's
standard library directory, sorted by name. Files are assigned to splits by a
hash of their name (80% train, 10% validation, 10% test), so a module never
appears in two splits. Characters map to a fixed vocabulary: tab, newline and
the 95 printable ASCII characters, plus one id for anything else.
"""

import hashlib
import sysconfig
from pathlib import Path

import numpy as np

NAME = "python_stdlib_source"
SPLITS = ("train", "validation", "test")
PAD_ID = 0
OOV_ID = 1
_ALPHABET = "\t\n" + "".join(chr(c) for c in range(32, 127))
VOCAB = ["<pad>", "<oov>"] + list(_ALPHABET)
VOCAB_SIZE = len(VOCAB)
_CHAR_TO_ID = {ch: i for i, ch in enumerate(VOCAB) if i >= 2}


def _split_of(filename):
    bucket = int(hashlib.sha256(filename.encode()).hexdigest(), 16) % 10
    return "validation" if bucket == 0 else "test" if bucket == 1 else "train"


def source_files(split):
    """The standard-library files that make up `split`, sorted by name."""
    if split not in SPLITS:
        raise ValueError(f"stdlib_text: unknown split {split!r}; use one of {SPLITS}.")
    root = Path(sysconfig.get_paths()["stdlib"])
    return [p for p in sorted(root.glob("*.py")) if _split_of(p.name) == split]


def encode(text):
    """Maps a string to int32 ids of `VOCAB`."""
    return np.array([_CHAR_TO_ID.get(ch, OOV_ID) for ch in text], dtype="int32")


def decode(ids):
    """Maps ids back to a string (padding dropped)."""
    return "".join(VOCAB[i] for i in np.asarray(ids).ravel() if i != PAD_ID)


def load(split, sequence_length=64, max_chars=None):
    """Returns next-character prediction pairs `(x, y)` for one split.

    The split's files are concatenated and cut into non-overlapping windows of
    `sequence_length + 1` characters; `x` is each window but its last
    character, `y` the window shifted by one.

    Args:
        split: one of `"train"`, `"validation"`, `"test"`.
        sequence_length: characters per example.
        max_chars: if set, use only the first `max_chars` characters.

    Returns:
        `x` and `y`, int32 arrays of shape `(n, sequence_length)`.

    Example:

    >>> x, y = load("validation", sequence_length=32, max_chars=10_000)
    >>> x.shape[1], bool((x[:, 1:] == y[:, :-1]).all())
    (32, True)
    """
    text = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in source_files(split))
    if max_chars is not None:
        text = text[:max_chars]
    ids = encode(text)
    window = sequence_length + 1
    n = len(ids) // window
    ids = ids[: n * window].reshape(n, window)
    return ids[:, :-1], ids[:, 1:]
