"""The one-pass merge kernel: out = W + B @ A for many weights in one call (the C source is fused_add.c).

Why a kernel: a merge of low total rank is bound by memory, and torch's out-of-place addmm first
copies W into the output and then runs the GEMM over it, so W's bytes cross memory twice. The kernel
reads W once, adds the fp32 product from registers, rounds once to W's dtype and writes the output
once; rows are split between torch.get_num_threads() threads.

It is compiled on first use with the system C compiler ($CC, else cc) for this CPU (-march=native)
into QUIVER_CACHE/kernels, under a name that hashes the source, the compiler and the CPU's flags,
and loaded with ctypes: nothing is built at install time and a wheel stays pure Python. `quiver kernel
build` builds it ahead of time (for an image without a compiler at run time). Where it cannot be built
(no compiler), merges use torch alone and a RuntimeWarning says so once. QUIVER_FUSED_KERNEL=0 turns it
off.

Loading a shared library runs its code, so it is loaded only from a folder that the current user owns
and nobody else can write to (and only a file that user owns, writable by nobody else): a kernel folder
that others could write to is refused with a warning, and merges use torch alone.

It also concatenates the factors of the merges that go to torch's GEMM instead (concatenated()).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from quiver_hub.paths import default_cache_dir

SOURCE = Path(__file__).with_name("fused_add.c")
FLAGS = ["-O3", "-march=native", "-shared", "-fPIC", "-pthread"]
_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


class _Term(ctypes.Structure):
    _fields_ = [
        ("b", ctypes.c_void_p),
        ("a", ctypes.c_void_p),
        ("r", ctypes.c_int64),
        ("b_row", ctypes.c_int64),
        ("b_col", ctypes.c_int64),
        ("scale", ctypes.c_float),
    ]


class _Job(ctypes.Structure):
    _fields_ = [
        ("w", ctypes.c_void_p),
        ("out", ctypes.c_void_p),
        ("m", ctypes.c_int64),
        ("n", ctypes.c_int64),
        ("dtype", ctypes.c_int64),
        ("nterms", ctypes.c_int64),
        ("terms", ctypes.POINTER(_Term)),
    ]


class _ConcatJob(ctypes.Structure):
    _fields_ = [
        ("b_out", ctypes.c_void_p),
        ("a_out", ctypes.c_void_p),
        ("m", ctypes.c_int64),
        ("n", ctypes.c_int64),
        ("dtype", ctypes.c_int64),
        ("nterms", ctypes.c_int64),
        ("terms", ctypes.POINTER(_Term)),
    ]


Term = tuple[torch.Tensor, torch.Tensor, float]  # (B: m x r, A: r x n, scale s): adds s B A
Job = tuple[torch.Tensor, Sequence[Term], torch.Tensor]  # (weight, terms, out)


_lock = threading.Lock()
_library: list[ctypes.CDLL | None] = []  # filled once per process: the loaded kernel, or None


def _cpu() -> str:
    """What -march=native depends on: a binary built for one CPU may not run on another that shares
    the cache folder."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def _compiler() -> list[str]:
    return shlex.split(os.environ.get("CC") or "cc")


def kernel_path() -> Path:
    key = hashlib.sha256(
        b"\0".join([SOURCE.read_bytes(), " ".join(_compiler() + FLAGS).encode(), _cpu().encode()])
    ).hexdigest()
    return default_cache_dir() / "kernels" / f"fused_add-{key[:20]}.so"


class UnsafeKernel(OSError):
    """The kernel's folder or file could be written by another user: loading it could run their code."""


def check_private(path: Path) -> None:
    """Raise UnsafeKernel unless `path` belongs to this user and no other user may write to it (POSIX;
    elsewhere only the user's own profile folders hold the cache)."""
    if not hasattr(os, "getuid"):
        return
    info = path.stat()
    if info.st_uid != os.getuid():
        raise UnsafeKernel(f"{path} belongs to another user (uid {info.st_uid})")
    if info.st_mode & 0o022:
        raise UnsafeKernel(f"{path} can be written by other users (mode {info.st_mode & 0o777:o})")


def build(target: Path | None = None, flags: Sequence[str] = FLAGS) -> Path:
    """Compile the kernel for this CPU (into kernel_path() by default) and return where it is."""
    target = target or kernel_path()
    _build(target, flags)
    return target


def _build(target: Path, flags: Sequence[str] = FLAGS) -> None:
    """Compile into a temporary name and rename: processes building at once never see half a file. The
    folder is made private to the user (0700) when this creates it, and must be private in any case."""
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_private(target.parent)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        subprocess.run(
            [*_compiler(), *flags, "-o", str(built), str(SOURCE)],
            check=True,
            capture_output=True,
            text=True,
            timeout=300,
        )
        os.replace(built, target)


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declare the kernel's entry points to ctypes."""
    lib.quiver_add_products.restype = ctypes.c_int
    lib.quiver_add_products.argtypes = [ctypes.POINTER(_Job), ctypes.c_int64, ctypes.c_int]
    lib.quiver_concat.restype = None
    lib.quiver_concat.argtypes = [ctypes.POINTER(_ConcatJob), ctypes.c_int64, ctypes.c_int]
    lib.quiver_fused_dtypes.restype = ctypes.c_int
    lib.quiver_fused_dtypes.argtypes = []
    return lib


def _load() -> ctypes.CDLL | None:
    target = kernel_path()
    try:
        if not target.exists():
            _build(target)
        check_private(target.parent)
        check_private(target)
        lib = ctypes.CDLL(str(target))
    except UnsafeKernel as exc:
        warnings.warn(
            f"quiver: not loading the fused merge kernel: {exc}; merging with torch alone, which is slower",
            RuntimeWarning,
            stacklevel=4,
        )
        return None
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        warnings.warn(
            f"quiver: could not build the fused merge kernel with {' '.join(_compiler())!r} "
            f"({detail.strip().splitlines()[-1] if detail.strip() else type(exc).__name__}); "
            "merging with torch alone, which is slower",
            RuntimeWarning,
            stacklevel=4,
        )
        return None
    return _bind(lib)


def library() -> ctypes.CDLL | None:
    """The kernel, built on the first call of this process that needs it; None when it is turned off
    (QUIVER_FUSED_KERNEL=0) or cannot be built."""
    if os.environ.get("QUIVER_FUSED_KERNEL", "1") == "0":
        return None
    with _lock:
        if not _library:
            _library.append(_load())
        return _library[0]


def supports(dtype: torch.dtype) -> bool:
    lib = library()
    return lib is not None and dtype in _CODES and bool(lib.quiver_fused_dtypes() >> _CODES[dtype] & 1)


def term_shape(terms: Sequence[Term]) -> tuple[int, int, int]:
    """(m, n, rank) of a sum of terms s_t B_t A_t: the weight's shape and the total rank."""
    return terms[0][0].shape[0], terms[0][1].shape[1], sum(A.shape[0] for _, A, _ in terms)


def _library_or_raise() -> ctypes.CDLL:
    lib = library()
    if lib is None:
        raise RuntimeError("the fused merge kernel is not available (see supports())")
    return lib


def _term_table(terms: Sequence[Term], m: int, n: int, keep: list) -> ctypes.Array:
    """The C view of the terms of an m x n weight; `keep` holds what it points into."""
    table = (_Term * len(terms))()
    for cterm, (B, A, scale) in zip(table, terms, strict=True):
        B, A = B.to(device="cpu", dtype=torch.float32), A.to(device="cpu", dtype=torch.float32).contiguous()
        if B.shape != (m, A.shape[0]) or A.shape[1] != n:
            raise ValueError(f"a term B {tuple(B.shape)} @ A {tuple(A.shape)} does not fit a {m} x {n} weight")
        keep += [B, A]
        cterm.b, cterm.a, cterm.r, cterm.scale = B.data_ptr(), A.data_ptr(), A.shape[0], scale
        cterm.b_row, cterm.b_col = B.stride()
    keep.append(table)
    return table


def add_products(jobs: Sequence[Job]) -> None:
    """out = weight + sum_t s_t B_t A_t for every (weight, terms, out), in one call to the kernel.

    weight and out: contiguous m x n CPU tensors of one dtype that supports() accepts. Each term's B
    (m x r, any strides) and A (r x n) are read in place when they are fp32 and A's rows are
    contiguous, else converted first. Each element is rounded once to the weight's dtype. MemoryError
    when the kernel cannot allocate its packing buffers (a few MB): `out` may then be partly written,
    `weight` never.
    """
    lib = _library_or_raise()
    table = (_Job * len(jobs))()
    keep: list = []
    for slot, (weight, terms, out) in zip(table, jobs, strict=True):
        if out.shape != weight.shape or out.dtype != weight.dtype or weight.dim() != 2:
            raise ValueError("weight and out must be matrices of one shape and dtype")
        if not (weight.is_contiguous() and out.is_contiguous()) or {weight.device.type, out.device.type} != {"cpu"}:
            raise ValueError("weight and out must be contiguous CPU tensors")
        m, n = weight.shape
        slot.w, slot.out, slot.m, slot.n = weight.data_ptr(), out.data_ptr(), m, n
        slot.dtype, slot.nterms, slot.terms = _CODES[weight.dtype], len(terms), _term_table(terms, m, n, keep)
    if lib.quiver_add_products(table, len(jobs), torch.get_num_threads()):
        raise MemoryError("the fused merge kernel could not allocate its packing buffers")


def concatenated(jobs: Sequence[tuple[Sequence[Term], torch.dtype]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each (terms, dtype): B_cat = [s_1 B_1 | ... | s_K B_K] and A_cat = [A_1; ...; A_K] in `dtype` (one
    that supports() accepts), each element computed in fp32 and rounded once: the factors of one GEMM
    that does the product instead of the kernel. One call, every thread."""
    lib = _library_or_raise()
    table = (_ConcatJob * len(jobs))()
    keep: list = []
    out = []
    for slot, (terms, dtype) in zip(table, jobs, strict=True):
        m, n, rank = term_shape(terms)
        B_cat, A_cat = torch.empty(m, rank, dtype=dtype), torch.empty(rank, n, dtype=dtype)
        slot.b_out, slot.a_out, slot.m, slot.n = B_cat.data_ptr(), A_cat.data_ptr(), m, n
        slot.dtype, slot.nterms, slot.terms = _CODES[dtype], len(terms), _term_table(terms, m, n, keep)
        out.append((B_cat, A_cat))
    lib.quiver_concat(table, len(jobs), torch.get_num_threads())
    return out
