"""Which files a version may hold (docs/adapters-and-api.md).

The adapter's own files (adapter_config.json, adapter_model.safetensors, README.md, examples.jsonl) are
validated and analysed. Beside them, a real training folder holds files that are not the adapter but are
safe to store and serve: tokenizer files, chat templates, JSON and text, images for the card. Those are
stored with the version, listed in its tree, and left out of validation and analysis.

Refused, whatever they are called: pickles (loading them runs code), and any file whose bytes are also a
zip archive (torch.load reads a zip holding a pickle even when the file is named .safetensors). Every
refused file is named in one message, with the patterns that leave it out of an upload.
"""

from __future__ import annotations

import hashlib
import unicodedata
import zipfile
from collections.abc import Callable
from pathlib import Path

from quiver_hub.registry.catalogue.names import check_file_path
from quiver_hub.registry.errors import InvalidAdapter
from quiver_hub.registry.intake.safetensors_header import read_header
from quiver_hub.registry.limits import MAX_CARD_BYTES, MAX_FILES, MAX_TEXT_BYTES
from quiver_hub.registry.lora import algebra

README_FILE = "README.md"
EXAMPLES_FILE = "examples.jsonl"
ADAPTER_FILES = (algebra.CONFIG_FILE, algebra.WEIGHTS_FILE, README_FILE, EXAMPLES_FILE)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")
# Safe extras: text (must be UTF-8), images (checked by their magic bytes), and a few binary formats
# that hold no code (sentencepiece models, safetensors checked like the weights).
TEXT_SUFFIXES = (".json", ".jsonl", ".txt", ".md", ".jinja", ".yaml", ".yml", ".csv", ".tsv", ".vocab", ".tiktoken")
IMAGE_MAGIC = {
    ".png": (b"\x89PNG\r\n\x1a\n",),
    ".jpg": (b"\xff\xd8\xff",),
    ".jpeg": (b"\xff\xd8\xff",),
    ".gif": (b"GIF87a", b"GIF89a"),
    ".webp": (b"RIFF",),
}
BINARY_SUFFIXES = (".model", ".safetensors")
EXCLUDE_HINT = (
    "leave them out of the upload: huggingface_hub's upload_folder(..., ignore_patterns=[{patterns}]), "
    "`hf upload ... --exclude {first}`, or `quiver push ... --exclude {first}`"
)


def kind(path: str) -> str:
    """ "adapter", "pickle", "text", "image", "binary" or "unknown"."""
    lower = path.lower()
    if path in ADAPTER_FILES:
        return "adapter"
    if lower.endswith(PICKLE_SUFFIXES):
        return "pickle"
    suffix = Path(lower).suffix
    if suffix in TEXT_SUFFIXES or not suffix:  # LICENSE, .gitattributes, merges.txt...
        return "text"
    if suffix in IMAGE_MAGIC:
        return "image"
    if suffix in BINARY_SUFFIXES:
        return "binary"
    return "unknown"


def check_files(files: dict[str, Path]) -> None:
    """Refuse an upload holding anything but the adapter's files and safe extras, naming every refused
    file at once. Extras are checked for what they claim to be."""
    if len(files) > MAX_FILES:
        raise InvalidAdapter(f"an upload holds at most {MAX_FILES} files, got {len(files)}")
    check_confusables(list(files))
    pickles, unknown, wrong = [], [], []
    for path, staged in sorted(files.items()):
        check_file_path(path)
        what = kind(path)
        if what == "pickle" or (not path.lower().endswith(".safetensors") and looks_like_pickle(staged)):
            pickles.append(path)
        elif what == "unknown":
            unknown.append(path)
        elif zipfile.is_zipfile(staged):
            wrong.append(f"{path} (its bytes are also a zip archive, which torch.load would unpickle)")
        elif problem := extra_problem(path, what, staged):
            wrong.append(f"{path} ({problem})")
    parts = []
    if pickles:
        patterns = sorted({"*" + Path(p).suffix for p in pickles if Path(p).suffix} or {pickles[0]})
        parts.append(
            f"refused pickle files, which run code when loaded: {', '.join(pickles)}; "
            + EXCLUDE_HINT.format(patterns=", ".join(f'"{p}"' for p in patterns), first=f"'{patterns[0]}'")
        )
    if unknown:
        parts.append(
            f"refused files of a kind Quiver does not store: {', '.join(unknown)} (beside the adapter it keeps "
            "text, JSON, tokenizer, chat-template, image and safetensors files)"
        )
    if wrong:
        parts.append("refused: " + "; ".join(wrong))
    if parts:
        raise InvalidAdapter(". ".join(parts))
    for required in (algebra.CONFIG_FILE, algebra.WEIGHTS_FILE):
        if required not in files:
            raise InvalidAdapter(f"{required} is missing; upload the folder written by PEFT's save_pretrained")


def stored_as_lfs(path: str) -> bool:
    """Whether the Hugging Face Hub would keep this file in LFS (weights); the protocol lists such files
    with their sha256 (`lfs.oid`) beside the git id of their pointer."""
    return path.endswith(".safetensors")


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The Git LFS pointer file that stands for a file in git (git-lfs spec v1)."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def git_oid(path: str, sha256: str, size: int, read: Callable[[], Path]) -> str:
    """The file's git object id, as the Hub's tree gives it: the blob SHA-1 of its bytes, or for an LFS
    file of its pointer (computed from sha256 and size, so weights are never read again). `read` gives a
    local file holding the bytes, asked for only when they are hashed."""
    if stored_as_lfs(path):
        pointer = lfs_pointer(sha256, size)
        return hashlib.sha1(b"blob %d\0" % len(pointer) + pointer, usedforsecurity=False).hexdigest()
    digest = hashlib.sha1(b"blob %d\0" % size, usedforsecurity=False)
    with read().open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def confusable_key(path: str) -> str:
    """What a person (and a case-insensitive or normalising file system) reads a path as: decomposed, with
    combining marks and invisible format characters (zero-width spaces and joiners, soft hyphens) dropped,
    recomposed compatibly (NFKC) and case-folded. "README.md" with a combining accent or a zero-width
    space, in full-width letters or in capitals all read as README.md."""
    decomposed = unicodedata.normalize("NFKD", path)
    kept = "".join(c for c in decomposed if unicodedata.category(c) not in ("Mn", "Me", "Cf"))
    return unicodedata.normalize("NFKC", kept).casefold()


RESERVED_KEYS = {confusable_key(name): name for name in ADAPTER_FILES}


def check_confusables(paths: list[str]) -> None:
    """Refuse a path that reads as one of the adapter's own files without being it, and two paths that
    read as one another: either would be stored beside the real file and shown as it."""
    seen: dict[str, str] = {}
    for path in sorted(paths):
        key = confusable_key(path)
        reserved = RESERVED_KEYS.get(key)
        if reserved is not None and path != reserved:
            raise InvalidAdapter(f"file {path!r} reads as {reserved} but is not it; name it {reserved} exactly")
        if key in seen:
            raise InvalidAdapter(f"files {seen[key]!r} and {path!r} differ only in case or Unicode form")
        seen[key] = path


def looks_like_pickle(path: Path) -> bool:
    """A pickle of protocol 2 or later starts with PROTO (0x80) and its version, whatever the file's name."""
    with path.open("rb") as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def extra_problem(path: str, what: str, staged: Path) -> str | None:
    """Why a file that claims to be text, an image or a safe binary is not (None when it is)."""
    size = staged.stat().st_size
    if path == README_FILE and size > MAX_CARD_BYTES:
        return f"the model card is larger than {MAX_CARD_BYTES} bytes"
    if what in ("text", "adapter") and path != algebra.WEIGHTS_FILE:
        if size > MAX_TEXT_BYTES:
            return f"text files are at most {MAX_TEXT_BYTES} bytes"
        try:
            staged.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            return "not UTF-8 text"
    if what == "image":
        with staged.open("rb") as f:
            head = f.read(12)
        if not any(head.startswith(magic) for magic in IMAGE_MAGIC[Path(path.lower()).suffix]):
            return "not the image its name says"
    if path.lower().endswith(".safetensors") and path != algebra.WEIGHTS_FILE:
        with staged.open("rb") as f:
            read_header(f, size, path)
    return None
