"""The one-pass merge kernel (client/local/fused.py, client/local/fused_add.c) and every other way a merge's product
is computed on a CPU, against exact float64 arithmetic."""

from __future__ import annotations

import ctypes
import importlib
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from quiver_hub.local import fused

merge_module = importlib.import_module("quiver_hub.local.merging")
ROOT = Path(__file__).resolve().parents[2]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def exact(weight: torch.Tensor, terms: list) -> torch.Tensor:
    total = weight.double().clone()
    for B, A, scale in terms:
        total += scale * B.double() @ A.double()
    return total


def ulp(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of `dtype` numbers at |x| (its normal range)."""
    mantissa = {torch.float32: 23, torch.bfloat16: 7, torch.float16: 10}[dtype]
    smallest = torch.finfo(dtype).tiny
    exponent = torch.floor(torch.log2(x.abs().clamp_min(smallest)))
    return torch.pow(2.0, exponent - mantissa)


def assert_rounded_once(out: torch.Tensor, weight: torch.Tensor, terms: list) -> None:
    """Every element within half a unit of the exact sum (plus fp32 accumulation error), and in low
    precision almost always (fp32 accumulation aside) exactly the correctly rounded value: a product
    rounded to the dtype before being added (two roundings) misses it for 5-30% of these elements."""
    truth = exact(weight, terms)
    error = (out.double() - truth).abs()
    slack = 0.5 * ulp(truth, out.dtype) + 1e-6 * (weight.double().abs() + 1)
    assert bool((error <= slack).all()), f"max error {float((error - slack).max())} above half an ulp"
    if out.dtype != torch.float32:
        wrong = int((out != truth.to(out.dtype)).sum())
        assert wrong <= max(2, out.numel() // 500), f"{wrong} of {out.numel()} not correctly rounded"


def make_terms(m: int, n: int, ranks: list[int], seed: int, transposed: bool = False) -> list:
    g = torch.Generator().manual_seed(seed)
    terms = []
    for i, r in enumerate(ranks):
        B = torch.randn(m, r, generator=g) * 0.05
        A = torch.randn(r, n, generator=g) * 0.05
        if transposed and i % 2:  # B as a transposed view, as a GPT-2 Conv1D merge passes it
            B = torch.randn(r, m, generator=g).T * 0.05
        terms.append((B, A, 0.5 + i))
    return terms


@pytest.fixture
def kernel() -> None:
    assert fused.library() is not None, "the fused merge kernel must build on this machine (a C compiler is here)"


SHAPES = [
    (7, 37, [1]),  # one tile of rows and a partial one; two panels of columns and a partial one
    (64, 64, [16]),
    (130, 200, [3, 16, 5]),
    (1, 129, [2, 2]),
    (300, 1024, [16] * 8),
    (14, 4100, [100, 60]),  # A (rank 160 x 4100, 2.6 MB) packed in two blocks of columns, the last one partial
]


def check_rounds_once(m: int, n: int, ranks: list[int], dtype: torch.dtype) -> None:
    weight = (torch.randn(m, n, generator=torch.Generator().manual_seed(3)) * 0.1).to(dtype)
    before = weight.clone()
    terms = make_terms(m, n, ranks, seed=m + n, transposed=True)
    out = torch.full_like(weight, float("nan"))  # every element must be written
    fused.add_products([(weight, terms, out)])
    assert torch.equal(weight, before)
    assert not out.isnan().any()
    assert_rounded_once(out, weight, terms)


def check_nan_and_inf_pass_through(dtype: torch.dtype) -> None:
    weight = torch.zeros(8, 70, dtype=dtype)  # NaN in a whole tile, inf at the edges of rows and of columns
    weight[1, 3], weight[5, 69], weight[6, 0] = float("nan"), float("inf"), -float("inf")
    out = torch.empty_like(weight)
    fused.add_products([(weight, make_terms(8, 70, [4], seed=1), out)])
    assert out[1, 3].isnan() and out[5, 69] == float("inf") and out[6, 0] == -float("inf")
    assert int(out.isnan().sum()) == 1 and int(out.isinf().sum()) == 2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("m", "n", "ranks"), SHAPES)
def test_kernel_rounds_the_exact_sum_once(kernel: None, dtype: torch.dtype, m: int, n: int, ranks: list[int]) -> None:
    check_rounds_once(m, n, ranks, dtype)


def test_kernel_passes_nan_and_inf_through(kernel: None) -> None:
    for dtype in DTYPES:
        check_nan_and_inf_pass_through(dtype)


# x86-64 levels and every CPU flag each needs (as /proc/cpuinfo names them): v2 builds the source's generic
# vector code (what NEON compiles), v3 AVX2 with its own bf16 instructions, v4 AVX-512.
V2 = {"cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"}
V3 = V2 | {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}
V4 = V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
LEVELS = {"x86-64-v2": V2, "x86-64-v3": V3, "x86-64-v4": V4}


@pytest.mark.parametrize("level", LEVELS)
def test_every_vector_width_of_the_kernel_computes_the_same(
    kernel: None, level: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """-march=native builds one of the source's paths; build it for each x86-64 level this CPU runs and
    check the same arithmetic, so the paths other CPUs take are tested here too."""
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("x86-64 levels only")
    if not LEVELS[level] <= set(fused._cpu().split()):
        pytest.skip(f"this CPU cannot run {level}")
    target = tmp_path / f"fused_add-{level}.so"
    fused._build(target, [f for f in fused.FLAGS if f != "-march=native"] + [f"-march={level}"])
    monkeypatch.setattr(fused, "_library", [fused._bind(ctypes.CDLL(str(target)))])
    for dtype in filter(fused.supports, DTYPES):
        for m, n, ranks in [SHAPES[0], SHAPES[2], SHAPES[5]]:
            check_rounds_once(m, n, ranks, dtype)
        check_nan_and_inf_pass_through(dtype)


@pytest.mark.skipif(sys.platform != "linux", reason="caps the address space and tunes glibc's malloc")
def test_kernel_out_of_memory_is_an_error_and_the_model_is_unchanged() -> None:
    """Where the kernel cannot allocate its packing buffers (address space capped here), merge() raises
    MemoryError and leaves every weight as it was. One thread (a helper thread's malloc arena can grow
    inside address space it reserved before the cap), and glibc maps every allocation of 64 kB and more
    afresh, so no memory it already holds can serve the 1 MB the kernel asks."""
    script = textwrap.dedent(
        """
        import ctypes, importlib, re, resource, torch
        ctypes.CDLL(None).mallopt(-3, 65536)  # M_MMAP_THRESHOLD
        torch.set_num_threads(1)
        from quiver_hub import Adapter, fused, merge, unmerge
        from quiver_hub.registry.lora import algebra
        importlib.import_module("quiver_hub.local.merging").NATIVE_GEMM_MIN_RANK = 1 << 30  # the kernel, AMX too
        model = torch.nn.Sequential(torch.nn.Linear(4096, 64, bias=False)).to(torch.bfloat16)
        factors = {"0": algebra.Factors(torch.randn(64, 4096), torch.randn(64, 64), 0.5)}
        adapter = Adapter("a", {"r": 64}, factors)
        merge(model, adapter)  # builds the kernel, and leaves a spare buffer for the next merge
        unmerge(model)
        before = model[0].weight.clone()
        size = int(re.search(r"VmSize:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 19), resource.RLIM_INFINITY))
        try:
            merge(model, adapter)
        except MemoryError as exc:
            print("MemoryError:", exc)
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        print("unchanged" if torch.equal(model[0].weight, before) else "changed")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "MemoryError: the fused merge kernel could not allocate its packing buffers",
        "unchanged",
    ]


def test_kernel_refuses_what_it_cannot_compute(kernel: None) -> None:
    weight = torch.zeros(8, 16)
    with pytest.raises(ValueError, match="does not fit"):
        fused.add_products([(weight, make_terms(8, 15, [2], seed=1), torch.empty_like(weight))])
    with pytest.raises(ValueError, match="contiguous"):
        fused.add_products([(torch.zeros(16, 8).T, make_terms(8, 16, [2], seed=1), torch.empty(8, 16))])
    with pytest.raises(ValueError, match="one shape and dtype"):
        fused.add_products([(weight, make_terms(8, 16, [2], seed=1), torch.empty(8, 16, dtype=torch.bfloat16))])


def test_kernel_concatenates_factors_as_torch_does(kernel: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The factors handed to a GEMM instead of the kernel (B_cat = [s_t B_t], A_cat = [A_t]): built by
    the kernel in one pass or by torch term by term, bitwise the same, in the order asked, also when
    some dtypes are the kernel's and some (float64) are not."""
    cpu = torch.device("cpu")
    items = [
        (make_terms(130, 200, [3, 16, 5], seed=4, transposed=True), dtype, cpu)
        for dtype in [torch.bfloat16, torch.float64, torch.float32, torch.float16]
    ]
    with_kernel = merge_module.concatenated(items)
    monkeypatch.setenv("QUIVER_FUSED_KERNEL", "0")
    with_torch = merge_module.concatenated(items)
    for (terms, dtype, _), (B, A), (B_t, A_t) in zip(items, with_kernel, with_torch, strict=True):
        assert B.dtype == A.dtype == dtype and B.shape == (130, 24) and A.shape == (24, 200)
        assert torch.equal(B, B_t) and torch.equal(A, A_t)
        assert torch.equal(B[:, 3:19], (terms[1][0].double() * terms[1][2]).float().to(dtype))
        assert torch.equal(A[19:], terms[2][1].to(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", ["cpu native", "cpu fp32", "cuda"])
def test_torch_paths_round_the_exact_sum_once(monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, path: str) -> None:
    """Without the kernel: one addmm in the weight's dtype where that GEMM is native (fp32; bf16 and fp16
    on a CPU with the instructions, its factors rounded to the dtype first), else fp32 products (on a CPU
    in row blocks: a block smaller than the weight here, so several are added; on a GPU, whose bf16 and
    fp16 addmm round more than once, in one)."""
    if path == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if path == "cpu native":
        if not merge_module.native_gemm(dtype):
            pytest.skip(f"this CPU has no native {dtype} GEMM")
        monkeypatch.setattr(merge_module, "native_gemm", lambda d: True)
    if path == "cpu fp32":
        monkeypatch.setattr(merge_module, "native_gemm", lambda d: False)
    monkeypatch.setattr(merge_module, "BLOCK_ROWS", 48)
    m, n = 130, 96
    device = "cuda" if path == "cuda" else "cpu"
    weight = (torch.randn(m, n, generator=torch.Generator().manual_seed(5)) * 0.1).to(device, dtype)
    terms = make_terms(m, n, [16, 16, 16], seed=2, transposed=True)
    out = torch.full_like(weight, float("nan"))
    [(B, A)] = merge_module.concatenated([(terms, merge_module.product_dtype(weight), weight.device)])
    assert B.device == A.device == weight.device
    merge_module.add_product(weight, B, A, out)
    if B.dtype == dtype != torch.float32:  # a native GEMM on rounded factors: judge against those
        terms = [((B * s).to(dtype).float(), A.to(dtype).float(), 1.0) for B, A, s in terms]
    assert_rounded_once(out.cpu(), weight.cpu(), terms)


def run_merge(cache: Path, env: dict[str, str]) -> subprocess.Popen:
    script = textwrap.dedent(
        """
        import warnings, torch
        from quiver_hub import Adapter, merge
        from quiver_hub.registry.lora import algebra
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 96, bias=False)).to(torch.bfloat16)
        factors = {"0": algebra.Factors(torch.randn(8, 64), torch.randn(96, 8), 0.5)}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            merge(model, Adapter("a", {"r": 8}, factors))
        print([str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)])
        print(model[0].weight.float().sum().item())
        """
    )
    return subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "QUIVER_CACHE": str(cache), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_processes_building_the_kernel_at_once_share_one_build(tmp_path: Path) -> None:
    procs = [run_merge(tmp_path, {}) for _ in range(3)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    assert {out for out, _ in outputs} == {outputs[0][0]} and outputs[0][0].startswith("[]")
    built = list((tmp_path / "kernels").iterdir())
    assert len(built) == 1 and built[0].name.endswith(".so")  # no half-written temporaries left


def test_without_a_compiler_merges_still_work_and_say_why_they_are_slower(tmp_path: Path) -> None:
    good = run_merge(tmp_path / "good", {})
    bad = run_merge(tmp_path / "bad", {"CC": "/nonexistent/cc"})
    off = run_merge(tmp_path / "off", {"QUIVER_FUSED_KERNEL": "0"})
    (good_out, _), (bad_out, bad_err), (off_out, _) = (p.communicate(timeout=300) for p in (good, bad, off))
    assert good.returncode == bad.returncode == off.returncode == 0, bad_err
    warning, total = bad_out.splitlines()
    assert "could not build the fused merge kernel" in warning and "torch alone" in warning
    assert off_out.startswith("[]")  # turned off on purpose: nothing to warn about
    # bf16 on this CPU without the kernel: native GEMM or fp32 blocks; either way within rounding
    assert abs(float(total) - float(good_out.splitlines()[1])) < 1.0
    assert not (tmp_path / "bad" / "kernels").exists() or not any((tmp_path / "bad" / "kernels").glob("*.so"))


def test_a_kernel_folder_others_can_write_to_is_never_loaded(tmp_path: Path) -> None:
    """Loading a shared library runs its code: a kernel another user could have replaced is refused."""
    good = run_merge(tmp_path / "good", {})
    good_out, good_err = good.communicate(timeout=300)
    assert good.returncode == 0, good_err
    kernels = tmp_path / "good" / "kernels"
    assert kernels.stat().st_mode & 0o777 == 0o700  # made private to the user

    kernels.chmod(0o777)  # now anyone could swap the .so
    shared = run_merge(tmp_path / "good", {})
    out, err = shared.communicate(timeout=300)
    assert shared.returncode == 0, err
    warning, total = out.splitlines()
    assert "not loading the fused merge kernel" in warning and "can be written by other users" in warning
    assert abs(float(total) - float(good_out.splitlines()[1])) < 1.0  # merged with torch alone

    kernels.chmod(0o700)
    (built,) = kernels.glob("*.so")
    built.chmod(0o666)
    out, _ = run_merge(tmp_path / "good", {}).communicate(timeout=300)
    assert "can be written by other users" in out.splitlines()[0]


def test_quiver_kernel_build_builds_ahead_of_time(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "quiver_hub", "kernel", "build"],
        env={**os.environ, "QUIVER_CACHE": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    path = Path(built.stdout.strip())
    assert path.parent == tmp_path / "kernels" and path.is_file()
    out, err = run_merge(tmp_path, {"PATH": str(tmp_path / "no-compiler-here")}).communicate(timeout=300)
    assert out.startswith("[]"), err  # already built: no compiler needed at run time
