"""How the networks run: mixed precision, torch.compile, and chunked evaluation (the CPU-friendly network chunk).

`FieldRunner` wraps a model for rendering and training: it evaluates the model under autocast (bf16 on CPU
and CUDA, fp16 on CUDA) and returns fp32 raw outputs, so that the positional encoding (computed from fp32
inputs) and the volume rendering stay in fp32. Parameters, gradients and Adam state stay fp32 (the wrapped
model is the one the optimizer and the checkpoints see). fp16 needs a `torch.amp.GradScaler`
(see `grad_scaler`) because its gradients underflow; bf16 has fp32's exponent range and needs none.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import os
import platform
import time
import warnings
from typing import Callable, Optional

import torch
from torch import nn

from .config import RuntimeConfig
from .files import atomic_write

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Points per network call on the CPU when nothing was measured (a model that is not a FieldRunner). Calls
# whose activations stay in the cache run the MLPs fastest; which size that is depends on the machine
# (1024 to 8192 points for the paper MLP on 2-core machines of one kind), hence tuned_cpu_chunk.
CPU_NETWORK_CHUNK = 4096
CPU_CHUNK_CANDIDATES = (1024, 2048, 4096, 8192)
# Raised when the models' forward code changes the work per point (2: linear_of_concat) or the measurement
# changes (3: autocast entered per chunk, as in training), so that chunk sizes measured before are measured again.
MODELS_CODE_VERSION = 3
TUNING_POINTS = 16384  # points each candidate evaluates (forward and backward) when the chunk is measured
# Points per density-only call of a grid field on the CPU: its lookups gather from a grid far larger than any
# cache, so small calls gain nothing and pay the per-call overhead (4096-point calls: 1.3x the time of these).
CPU_GRID_DENSITY_CHUNK = 65536


def network_chunk(netchunk: int, device: torch.device, model: Optional[nn.Module] = None,
                  density_only: bool = False) -> int:
    """Points per network call: `netchunk` (the memory bound), capped on the CPU at the model's cache-sized
    chunk (FieldRunner.cpu_chunk: configured or measured) or CPU_NETWORK_CHUNK; a grid field's density-only
    calls at CPU_GRID_DENSITY_CHUNK."""
    if device.type != "cpu":
        return netchunk
    if density_only and isinstance(model, FieldRunner) and model.is_grid_field:
        return min(netchunk, CPU_GRID_DENSITY_CHUNK)
    chunk = model.cpu_chunk() if isinstance(model, FieldRunner) else CPU_NETWORK_CHUNK
    return min(netchunk, chunk)


def evaluate_points(model: nn.Module, points: torch.Tensor, viewdirs: torch.Tensor, netchunk: int) -> torch.Tensor:
    """model(points [P, 3], viewdirs [P, 3]) -> raw [P, 4], in calls of at most network_chunk(netchunk) points."""
    chunk = network_chunk(netchunk, points.device, model)
    if points.shape[0] <= chunk:
        return model(points, viewdirs)
    return torch.cat([model(points[k:k + chunk], viewdirs[k:k + chunk])
                      for k in range(0, points.shape[0], chunk)], dim=0)


def run_network(model: nn.Module, points: torch.Tensor, viewdirs: torch.Tensor, netchunk: int) -> torch.Tensor:
    """Evaluate the field at points: [R, S, 3] with per-ray viewdirs [R, 3] -> raw [R, S, 4],
    in chunks of at most `netchunk` points (a memory knob that does not change the result; on the CPU
    smaller chunks are used, see network_chunk)."""
    num_rays, num_samples = points.shape[:2]
    flat_points = points.reshape(-1, 3)  # [P, 3]
    flat_dirs = viewdirs[:, None, :].expand(points.shape).reshape(-1, 3)  # [P, 3]
    return evaluate_points(model, flat_points, flat_dirs, netchunk).reshape(num_rays, num_samples, -1)  # [R, S, 4]


@torch.no_grad()
def evaluate_density(density_fn: Callable, points: torch.Tensor, netchunk: int) -> torch.Tensor:
    """sigma = ReLU(density_fn(points)): [P], without gradients, in calls of at most network_chunk(netchunk)."""
    chunk = network_chunk(netchunk, points.device, getattr(density_fn, "__self__", None), density_only=True)
    if points.shape[0] <= chunk:
        return torch.relu(density_fn(points))
    return torch.cat([torch.relu(density_fn(points[k:k + chunk])) for k in range(0, points.shape[0], chunk)])


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for `precision` on `device`; None for fp32. ValueError where unsupported."""
    if precision == "fp32":
        return None
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"runtime.precision fp16 needs a CUDA device, not {device.type} (use bf16)")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("runtime.precision bf16: this GPU has no bf16 support (use fp16)")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"runtime.precision {precision}: autocast is supported on cpu and cuda, not {device.type}")
    return DTYPES[precision]


def try_compile(fn: Callable, what: str) -> Callable:
    """torch.compile(fn), or fn itself (with a warning) where compilation is unavailable.

    Compilation happens at the first call; an error there also falls back to eager (dynamo's
    suppress_errors), so a missing C++ compiler or an unsupported Python only costs speed.
    """
    try:
        import torch._dynamo

        torch._dynamo.config.suppress_errors = True
        return torch.compile(fn)
    except Exception as err:  # noqa: BLE001 - any failure means: run eagerly
        warnings.warn(f"torch.compile unavailable for {what} ({type(err).__name__}: {err}); running eagerly")
        return fn


class FieldRunner(nn.Module):
    """Runs `model(points, viewdirs) -> raw [P, 4]` in the configured precision, optionally compiled.

    Returns fp32 raw outputs. `density(points) -> sigma_raw [P]` is the density-only evaluation the
    occupancy grid uses (the trunk without the view branch, where the model has one).
    """

    def __init__(self, model: nn.Module, dtype: Optional[torch.dtype] = None, compile: bool = False,
                 cpu_chunk: int = 0):
        super().__init__()
        self.model = model
        self.dtype = dtype
        self._cpu_chunk = cpu_chunk  # 0: measure (or read the measurement from the cache) at the first call
        self.chunk_report = {"chunk": cpu_chunk, "source": "runtime.cpu_network_chunk"} if cpu_chunk else None
        self._forward = try_compile(model.forward, type(model).__name__) if compile else model.forward
        density = getattr(model, "density", None)
        self._density = (try_compile(density, type(model).__name__ + ".density") if compile and density
                         else density)

    def keep_cpu_chunk(self, chunk: int, where: str) -> None:
        """Use the chunk a resumed run trained with (the summation order of its weight gradients)."""
        self._cpu_chunk = chunk
        self.chunk_report = {"chunk": chunk, "source": where}

    def cpu_chunk(self) -> int:
        """Points per network call on the CPU: runtime.cpu_network_chunk, or this machine's best for the MLP
        and precision (tuned_cpu_chunk), measured once and cached. A voxel grid's MLP calls are not chunked
        this way (its gather adds gradients straight into .grad, which a measurement must not touch):
        CPU_NETWORK_CHUNK."""
        if not self._cpu_chunk:
            if self.is_grid_field:
                self.chunk_report = {"chunk": CPU_NETWORK_CHUNK, "source": "fixed for a voxel grid"}
            else:
                tuned = tuned_cpu_chunk(self)
                self.chunk_report = {**tuned, "source": "cache" if tuned["cached"] else "measured"}
            self._cpu_chunk = self.chunk_report["chunk"]
        return self._cpu_chunk

    @property
    def is_grid_field(self) -> bool:
        """True for a grid field (nerf/voxel_grid.py: values looked up in grids, not computed by an MLP)."""
        return hasattr(self.model, "grid_parameters")

    @property
    def has_color(self) -> bool:
        """True for a model with a separate colour branch `color(points, viewdirs) -> rgb_raw [P, 3]`."""
        return hasattr(self.model, "color")

    def color(self, points: torch.Tensor, viewdirs: torch.Tensor) -> torch.Tensor:
        with self._autocast(points.device):
            rgb_raw = self.model.color(points, viewdirs)
        return rgb_raw.float()

    def _autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def forward(self, points: torch.Tensor, viewdirs: Optional[torch.Tensor]) -> torch.Tensor:
        with self._autocast(points.device):
            raw = self._forward(points, viewdirs)
        return raw.float()

    def density(self, points: torch.Tensor) -> torch.Tensor:
        """points: [P, 3] -> sigma_raw: [P] (before the ReLU)."""
        with self._autocast(points.device):
            if self._density is not None:
                sigma_raw = self._density(points)
            else:  # a model whose density depends on the view: take it for a fixed direction
                viewdirs = torch.zeros_like(points)
                viewdirs[:, 2] = -1.0
                sigma_raw = self._forward(points, viewdirs)[:, 3]
        return sigma_raw.float()


def field_runners(coarse: nn.Module, fine: Optional[nn.Module], runtime: RuntimeConfig,
                  device: torch.device) -> tuple[FieldRunner, Optional[FieldRunner]]:
    """FieldRunners for the coarse and fine models under `runtime` (ValueError if its precision is unsupported).
    On the CPU this is also where runtime.keep_cpu_memory takes effect, for the whole process (every script
    builds its networks' runners here before it trains or renders)."""
    dtype = autocast_dtype(runtime.precision, device)
    if device.type == "cpu" and runtime.keep_cpu_memory:
        keep_freed_cpu_memory()
    if dtype == torch.bfloat16 and device.type == "cpu":
        speedup = cpu_bf16_speedup()
        if speedup < 1.0:
            warnings.warn(f"runtime.precision bf16: this CPU multiplies bf16 matrices at {speedup:.2f}x its fp32 "
                          "speed (it has no fast bf16 path), so fp32 trains faster here")
    return (FieldRunner(coarse, dtype, runtime.compile, runtime.cpu_network_chunk),
            FieldRunner(fine, dtype, runtime.compile, runtime.cpu_network_chunk) if fine is not None else None)


def grad_scaler(runtime: RuntimeConfig, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16 (disabled, i.e. a pass-through, for fp32 and bf16)."""
    return torch.amp.GradScaler(device.type, enabled=runtime.precision == "fp16")


# ------------------------------------------------------------------------------------- the CPU allocator
# glibc's mallopt parameters (<malloc.h>)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
_freed_memory_kept = False


@functools.lru_cache(maxsize=None)
def has_glibc_malloc() -> bool:
    """True where the process's malloc is glibc's: Linux on glibc (not musl), with no other allocator (jemalloc,
    tcmalloc, mimalloc, ...) preloaded in its place, i.e. `malloc` as the process resolves it is libc's own.
    Asked once per process (find_library runs a subprocess; the answer is fixed when the process starts)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        process = ctypes.CDLL(None)
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")  # libc.so.6.1 on alpha and ia64
        return (ctypes.cast(process.malloc, ctypes.c_void_p).value
                == ctypes.cast(libc.malloc, ctypes.c_void_p).value)
    except (OSError, AttributeError):  # a libc that cannot be opened counts as not glibc's: nothing is changed
        return False


def keep_freed_cpu_memory() -> bool:
    """Make glibc's malloc keep freed memory in the process for the next allocations: no mmap for large
    blocks (M_MMAP_MAX = 0) and no return of the heap's free top to the kernel (M_TRIM_THRESHOLD = -1:
    never).

    Why: PyTorch's CPU allocator asks malloc for every tensor. glibc serves blocks above its mmap threshold
    (128 KiB, raised up to 32 MiB as it sees them freed) with fresh mappings, unmaps them when they are
    freed and trims the heap's top; a training step asks for the same sizes again, and the kernel zero-fills
    every 4 KiB page on first touch (docs/speed.md has the measurements). Kept, the heap grows once to a
    step's peak, which the process then holds until it ends, including one-off peaks such as a validation
    render. Process-wide and not undone (glibc has no way back to its adaptive thresholds); forked children
    inherit it, spawned ones do not; allocations of worker threads' arenas above 64 MiB are still mapped.
    With jemalloc or tcmalloc preloaded it does nothing (has_glibc_malloc is false) and says so. It also
    changes where other libraries of the process get their memory: pycolmap's reconstruction in a process
    with it failed now and then (imgs2poses.py runs in a process of its own, without it). True where
    applied (glibc), False elsewhere."""
    global _freed_memory_kept
    if _freed_memory_kept:
        return True
    if not has_glibc_malloc():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _freed_memory_kept = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, -1))
    return _freed_memory_kept


def freed_cpu_memory_kept() -> bool:
    """Whether keep_freed_cpu_memory has been applied in this process."""
    return _freed_memory_kept


# ------------------------------------------------------------------------------------- the CPU chunk
def cache_folder() -> str:
    """Where measurements of this machine are kept: $NERF_CACHE_DIR, else $XDG_CACHE_HOME/nerf-pytorch (~/.cache)."""
    if os.environ.get("NERF_CACHE_DIR"):
        return os.environ["NERF_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "nerf-pytorch")


MATMUL_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")  # what decides the kernels


def machine_description() -> str:
    """The CPU model and its matrix-multiply features (a generic model name is shared by CPUs with and
    without AVX-512 BF16 or AMX), its core count, the torch version, its thread count and whether freed
    memory is kept (keep_freed_cpu_memory): what a measurement depends on."""
    name, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            lines = f.read().splitlines()
        name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), name)
        present = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
        flags = [flag for flag in MATMUL_FLAGS if flag in present]
    except OSError:
        pass
    return (f"{name} [{' '.join(flags)}]; {os.cpu_count()} cores; torch {torch.__version__}; "
            f"{torch.get_num_threads()} threads{'; freed memory kept' if freed_cpu_memory_kept() else ''}")


def model_signature(runner: "FieldRunner") -> str:
    """The shapes of the model's Linear layers, the precision and MODELS_CODE_VERSION: what a chunk size is
    tuned for."""
    shapes = [f"{m.in_features}x{m.out_features}" for m in runner.model.modules() if isinstance(m, nn.Linear)]
    return (f"{type(runner.model).__name__}({','.join(shapes)}) {str(runner.dtype or torch.float32)[6:]} "
            f"v{MODELS_CODE_VERSION}")


def measure_cpu_chunks(runner: "FieldRunner", candidates=CPU_CHUNK_CANDIDATES, points: int = TUNING_POINTS,
                       rounds: int = 2) -> dict:
    """Seconds of a forward and backward pass of `points` random points through the runner, in calls of each
    candidate size ({size: seconds}: the best of `rounds` passes, taken in turn so that a slow moment of a
    shared machine does not fall on one size alone). Uses its own generator and torch.autograd.grad, so
    the global RNG and the parameters' .grad are untouched."""
    generator = torch.Generator().manual_seed(0)
    xyz = torch.rand(points, 3, generator=generator) * 2 - 1  # [P, 3]
    dirs = torch.nn.functional.normalize(torch.randn(points, 3, generator=generator), dim=-1)  # [P, 3]
    params = [p for p in runner.model.parameters() if p.requires_grad]

    def call(chunk_xyz: torch.Tensor, chunk_dirs: torch.Tensor) -> torch.Tensor:
        # as FieldRunner.forward: autocast entered per call, so that the weights are cast (and their gradients
        # cast back) per chunk as in training; the eager model: a compiled one would recompile for every size
        with runner._autocast(chunk_xyz.device):
            return runner.model(chunk_xyz, chunk_dirs).float()

    def one_pass(chunk: int) -> float:
        start = time.perf_counter()
        raw = torch.cat([call(xyz[k:k + chunk], dirs[k:k + chunk]) for k in range(0, points, chunk)])  # [P, 4]
        torch.autograd.grad(raw.square().mean(), params, allow_unused=True)
        return time.perf_counter() - start

    one_pass(candidates[len(candidates) // 2])  # warm-up: allocator, weight casts, threads
    seconds = {chunk: float("inf") for chunk in candidates}
    for _ in range(rounds):
        for chunk in candidates:
            seconds[chunk] = min(seconds[chunk], one_pass(chunk))
    return seconds


def _read_cache() -> tuple[str, dict]:
    path = os.path.join(cache_folder(), "cpu_network_chunk.json")
    try:
        with open(path, encoding="utf-8") as f:
            table = json.load(f)
    except (OSError, ValueError):
        table = {}
    return path, table if isinstance(table, dict) else {}


def _write_cache(path: str, table: dict) -> None:
    try:
        atomic_write(path, lambda f: json.dump(table, f, indent=1), binary=False, prefix=".chunk-")
    except OSError as err:  # a read-only home: measure again next time
        warnings.warn(f"{path}: the measurement could not be cached ({err.strerror or err})")


def cpu_bf16_speedup(size: int = 4096, width: int = 256) -> float:
    """fp32 seconds / bf16 seconds of a [size, width] x [width, width] matrix product on this CPU (the MLP's
    shape): above 1 where the CPU has a fast bf16 path (AVX-512 BF16 or AMX), below where it has none.
    Measured once per machine (a fraction of a second) and cached beside the network chunks."""
    key = f"{machine_description()} | bf16 / fp32 matmul speed"
    path, table = _read_cache()
    if isinstance(table.get(key), (int, float)):
        return float(table[key])
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, width, generator=generator), torch.randn(width, width, generator=generator)

    def best(x, y) -> float:
        torch.mm(x, y)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            torch.mm(x, y)
            times.append(time.perf_counter() - start)
        return min(times)

    table[key] = round(best(a, b) / best(a.bfloat16(), b.bfloat16()), 3)
    _write_cache(path, table)
    return table[key]


def tuned_cpu_chunk(runner: "FieldRunner") -> dict:
    """{"chunk", "seconds", "machine", "model", "cached"}: the fastest CPU chunk for this machine and model,
    read from <cache_folder()>/cpu_network_chunk.json or measured (measure_cpu_chunks) and written there.
    The forward pass gives the same values for every chunk size; only speed (and the summation order of
    the weight gradients) depends on it."""
    machine, model = machine_description(), model_signature(runner)
    key = f"{machine} | {model}"
    path, table = _read_cache()
    entry = table.get(key)
    cached = isinstance(entry, dict) and isinstance(entry.get("chunk"), int) and entry["chunk"] > 0
    if not cached:
        with torch.enable_grad():
            seconds = measure_cpu_chunks(runner)
        entry = {"chunk": min(seconds, key=seconds.get), "seconds": {str(k): round(v, 4) for k, v in seconds.items()}}
        table[key] = entry
        _write_cache(path, table)
    return {**entry, "machine": machine, "model": model, "cached": cached}
