"""Generation in C: the whole token (embedding, cells, logits, draw) as one call per 64 tokens, compiled on
first use with the machine's C compiler and cached. A speed-up room of its own: without a compiler, or
with `RNNLM_NATIVE=0`, `rnnlm sample` draws the same text through torch (rnnlm/sample.py).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from rnnlm.data.registry import default_cache_dir, writer_tag

SOURCE = Path(__file__).with_name("generate.c")
MAX_LAYERS = 32  # generate.c's
CELLS = {"lstm": 0, "gru": 1, "tanh": 2, "relu": 3}


class Net(ctypes.Structure):
    """generate.c's `Net`: the sizes and the addresses of the weights, read-only."""

    _fields_ = [
        ("cell", ctypes.c_int32),
        ("layers", ctypes.c_int32),
        ("vocab", ctypes.c_int32),
        ("embed", ctypes.c_int32),
        ("hidden", ctypes.c_int32 * MAX_LAYERS),
        ("embedding", ctypes.c_void_p),
        ("weight_ih", ctypes.c_void_p * MAX_LAYERS),
        ("weight_hh", ctypes.c_void_p * MAX_LAYERS),
        ("bias_ih", ctypes.c_void_p * MAX_LAYERS),
        ("bias_hh", ctypes.c_void_p * MAX_LAYERS),
        ("decoder", ctypes.c_void_p),
        ("decoder_bias", ctypes.c_void_p),
    ]


def enabled() -> bool:
    return os.environ.get("RNNLM_NATIVE", "1") != "0"


def compile_flags(openmp: bool = True) -> list[str]:
    """-O3 (and OpenMP), with the vector instructions torch found on this CPU (not -march=native: a cache
    folder may be shared by machines of different CPUs, and the flags are part of the cached name)."""
    capability = torch.backends.cpu.get_cpu_capability()
    vector = {"AVX2": ["-mavx2", "-mfma"], "AVX512": ["-mavx2", "-mfma", "-mavx512f"]}.get(capability, [])
    loops = ["-fno-math-errno", "-fno-trapping-math", "-fno-strict-aliasing"]  # what lets generate.c's loops vectorize
    return ["-O3", *loops, *(["-fopenmp"] if openmp else []), "-shared", "-fPIC", *vector]


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernel, or None when it cannot be built here (`why_not` says why). Callers check
    `enabled()` first: it is read on every call, this is built once per process."""
    try:
        path = _build()
        try:
            lib = ctypes.CDLL(str(path))  # after torch: its libgomp is the one OpenMP runtime of the process
        except OSError:  # a cached file that does not load (cut short on a full disk): build it again, once
            path.unlink(missing_ok=True)
            lib = ctypes.CDLL(str(_build()))
    except (OSError, subprocess.SubprocessError) as exc:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        errors = [line for line in lines if "error" in line.lower()]  # gcc's last line is "compilation terminated."
        _failures.append(f"{lines[0]} {errors[0].strip()}" if errors and errors[0] != lines[0] else lines[0])
        return None
    lib.rnnlm_generate.restype = ctypes.c_int
    pointer, integer, real = ctypes.c_void_p, ctypes.c_int, ctypes.c_double
    lib.rnnlm_generate.argtypes = [ctypes.POINTER(Net), pointer, pointer, integer, integer, real, integer, real]
    lib.rnnlm_generate.argtypes += [pointer, pointer, integer]  # uniforms, out, threads
    return lib


_failures: list[str] = []


def why_not() -> str | None:
    """Why `library()` is None (off, no compiler, or the compiler's last line of errors); None when it is there."""
    if not enabled():
        return "RNNLM_NATIVE=0"
    if library() is not None:
        return None
    return _failures[-1] if _failures else "not built"


def failed() -> str | None:
    """Why the kernel, wanted in this process (a model it serves was sampled), could not be built: what a
    user can mend by installing a compiler. None when it was built, never wanted, or is off."""
    return why_not() if enabled() and library.cache_info().currsize else None


def _build() -> Path:
    """The shared library for this source, compiler, flags and CPU, compiled once into the cache folder
    (`$RNNLM_CACHE/native`, else ~/.cache/rnnlm/native); without OpenMP where the compiler has none."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise OSError("no C compiler (cc) on PATH")
    try:
        return _compiled(compiler, compile_flags(openmp=True))
    except OSError:
        return _compiled(compiler, compile_flags(openmp=False))  # macOS's clang, for one: one thread


def _compiled(compiler: str, flags: list[str]) -> Path:
    sources = [path.read_text() for path in sorted(SOURCE.parent.glob("*.[ch]"))]  # generate.c and what it includes
    key = hashlib.sha256(
        "\0".join([*sources, compiler, *flags, platform.machine(), platform.system()]).encode()
    ).hexdigest()[:16]
    folder = default_cache_dir() / "native"
    target = folder / f"generate-{key}.so"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f"generate-{key}.{writer_tag()}.partial"
    command = [compiler, *flags, "-o", str(partial), str(SOURCE), "-lm"]
    with tempfile.TemporaryFile() as errors:
        done = subprocess.run(command, stderr=errors, stdout=errors, timeout=120, check=False)
        if done.returncode != 0:
            errors.seek(0)
            partial.unlink(missing_ok=True)
            said = errors.read().decode(errors="replace").strip()
            raise OSError(f"{Path(compiler).name} failed (exit {done.returncode})" + (f":\n{said}" if said else ""))
    os.replace(partial, target)  # whole or not at all: another process may be building the same file
    return target


class Generator:
    """`rnnlm_generate` bound to one model's weights for the LSTM, the GRU and the tanh / ReLU Elman cell
    with the full softmax: float32 copies on the CPU, the matrices transposed (generate.c reads them row
    after row). Call it to draw tokens; it holds no state between calls."""

    def __init__(
        self,
        lib: ctypes.CDLL,
        cell: str,
        embedding: torch.Tensor,
        layers: list[tuple[torch.Tensor, ...]],
        decoder: torch.Tensor,
        decoder_bias: torch.Tensor,
    ) -> None:
        def own(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to("cpu", torch.float32).contiguous()

        self.lib = lib
        transposed = [own(w.t()) if w.dim() == 2 else own(w) for layer in layers for w in layer]  # W^T, U^T, b, b
        self.tensors = [own(embedding), *transposed, own(decoder.t()), own(decoder_bias)]
        embed, *weights, self.decoder, bias = self.tensors
        self.vocab, self.sizes = embed.size(0), [w.size(0) for w in weights[1::4]]  # U^T is (H, G H)
        net = Net(cell=CELLS[cell], layers=len(layers), vocab=self.vocab, embed=embed.size(1))
        net.embedding, net.decoder, net.decoder_bias = embed.data_ptr(), self.decoder.data_ptr(), bias.data_ptr()
        for k, size in enumerate(self.sizes):
            net.hidden[k] = size
            net.weight_ih[k], net.weight_hh[k], net.bias_ih[k], net.bias_hh[k] = (
                w.data_ptr() for w in weights[4 * k : 4 * k + 4]
            )
        self.net = net
        self.per_layer = 2 if cell == "lstm" else 1

    def __call__(
        self,
        tokens: torch.Tensor,
        state: tuple[torch.Tensor, ...],
        count: int,
        temperature: float,
        uniforms: torch.Tensor | None,
        top_k: int = 0,
        top_p: float = 1.0,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Read `tokens` (B,) and draw `count` tokens per sample from softmax(logits / temperature),
        restricted by `top_k` and `top_p` as rnnlm/sample.py's `distribution` does, the k-th with
        uniforms[k] (count or more rows, B; temperature 0: the argmax, no uniforms), each read in turn: the
        tokens drawn (count, B), and the state after reading `tokens` and every drawn token but the last,
        which is the next call's `tokens` (as `step` reads one token and scores the next)."""
        batch = tokens.size(0)
        ids = tokens.to("cpu", torch.int64).contiguous()
        if bool(((ids < 0) | (ids >= self.vocab)).any()):
            raise ValueError(f"token ids must lie in [0, {self.vocab})")
        flat = torch.cat([s.to("cpu", torch.float32).reshape(-1) for s in state])  # a new buffer: updated in place
        out = torch.empty(count, batch, dtype=torch.int64)
        draws = None
        if temperature > 0:
            assert uniforms is not None and uniforms.size(0) >= count
            draws = uniforms.to(torch.float64).reshape(-1, batch).contiguous()
        failed = self.lib.rnnlm_generate(
            ctypes.byref(self.net),
            ids.data_ptr(),
            flat.data_ptr(),
            count,
            batch,
            float(temperature),
            int(top_k),
            float(top_p),
            None if draws is None else draws.data_ptr(),
            out.data_ptr(),
            torch.get_num_threads(),
        )
        if failed:
            raise MemoryError("rnnlm_generate: out of memory")
        pieces = flat.split([batch * size for size in self.sizes for _ in range(self.per_layer)])
        return out, tuple(p.view(batch, -1) for p in pieces)
