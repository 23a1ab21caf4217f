import json
import os
import platform
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

from nerf import runtime
from nerf.config import ConfigError, ModelConfig, RuntimeConfig, load_config
from nerf.models import NeRFModel, build_model
from nerf.runtime import keep_freed_cpu_memory as real_keep_freed_cpu_memory  # conftest stubs the name
from nerf.runtime import (CPU_NETWORK_CHUNK, FieldRunner, autocast_dtype, evaluate_points, field_runners, network_chunk,
                          run_network, try_compile)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(num_layers=4, hidden_size=32, skip_connect_every=2, hidden_size_dir=16)


def _inputs(num=300):
    return torch.rand(num, 3) * 2 - 1, torch.nn.functional.normalize(torch.randn(num, 3), dim=-1)


def test_network_chunk_is_capped_on_the_cpu_only():
    assert network_chunk(65536, torch.device("cpu")) == CPU_NETWORK_CHUNK
    assert network_chunk(1000, torch.device("cpu")) == 1000
    assert network_chunk(65536, torch.device("cuda")) == 65536


def test_cpu_chunking_leaves_the_paper_model_forward_bit_exact():
    """4096-point calls give bitwise the forward of one 10000-point call; gradients differ only by the
    order of the sum over points (as with any netchunk)."""
    model = NeRFModel()
    points, dirs = _inputs(10000)
    whole = model(points, dirs)
    chunked = evaluate_points(model, points, dirs, netchunk=65536)
    assert torch.equal(chunked, whole)
    whole.square().mean().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    chunked.square().mean().backward()
    for g, p in zip(grads, model.parameters()):
        assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-7)


def test_chunked_evaluation_equals_one_call():
    model = NeRFModel(**SMALL)
    points, dirs = _inputs(1000)
    whole = model(points, dirs)
    assert torch.allclose(evaluate_points(model, points, dirs, netchunk=96), whole, atol=1e-6)
    raw = run_network(model, points.reshape(50, 20, 3), dirs.reshape(50, 20, 3)[:, 0], netchunk=64)
    ref = model(points, dirs.reshape(50, 20, 3)[:, :1].expand(50, 20, 3).reshape(-1, 3))
    assert torch.allclose(raw.reshape(-1, 4), ref, atol=1e-6)


def test_fp32_runner_is_the_model():
    model = NeRFModel(**SMALL)
    points, dirs = _inputs()
    runner = FieldRunner(model)
    assert torch.equal(runner(points, dirs), model(points, dirs))
    assert torch.equal(runner.density(points), model(points, dirs)[:, 3])


def test_bf16_runner_is_close_returns_fp32_and_trains_fp32_weights():
    model = NeRFModel(**SMALL)
    points, dirs = _inputs()
    runner = FieldRunner(model, torch.bfloat16)
    raw = runner(points, dirs)
    ref = model(points, dirs)
    assert raw.dtype == torch.float32
    assert not torch.equal(raw, ref)  # it really ran in bf16
    assert (raw - ref).abs().max() < 0.05 * ref.abs().max()
    raw.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


def test_density_fallback_for_models_without_a_density_head():
    model = build_model(ModelConfig(type="TinyNeRFModel", num_layers=2, hidden_size=16))
    points, _ = _inputs()
    dirs = torch.tensor([[0.0, 0.0, -1.0]]).expand(len(points), 3)
    assert torch.equal(FieldRunner(model).density(points), model(points, dirs)[:, 3])


def test_unsupported_precisions_are_refused():
    assert autocast_dtype("fp32", torch.device("cpu")) is None
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        autocast_dtype("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        field_runners(NeRFModel(**SMALL), None, RuntimeConfig(precision="fp16"), torch.device("cpu"))


def test_compile_falls_back_to_eager(monkeypatch):
    def broken(fn):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    fn = lambda x: x + 1  # noqa: E731
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert try_compile(fn, "fn") is fn
    assert "running eagerly" in str(caught[0].message)


def test_compiled_runner_matches_eager():
    from torch._dynamo.utils import counters

    model = NeRFModel(**SMALL)
    points, dirs = _inputs(256)
    compiled = FieldRunner(model, compile=True)
    graphs_before = counters["stats"]["unique_graphs"]
    assert torch.allclose(compiled(points, dirs), model(points, dirs), atol=1e-5)
    assert torch.allclose(compiled.density(points), model.density(points), atol=1e-5)
    assert counters["stats"]["unique_graphs"] > graphs_before  # it really compiled (no silent eager fallback)


def test_run_network_chunking_does_not_change_results():
    torch.manual_seed(0)
    coarse = NeRFModel(num_layers=3, hidden_size=32, skip_connect_every=1, hidden_size_dir=16)
    points, dirs = torch.randn(10, 7, 3), torch.randn(10, 3)
    assert torch.allclose(run_network(coarse, points, dirs, 5), run_network(coarse, points, dirs, 10_000),
                          atol=1e-6)


# --------------------------------------------------------------------------------------------------
# The CPU chunk: measured once per machine and model, cached, overridable


def test_the_cpu_chunk_is_measured_once_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NERF_CACHE_DIR", str(tmp_path))
    runner = FieldRunner(NeRFModel(**SMALL))
    for p in runner.model.parameters():
        p.grad = torch.full_like(p, 7.0)
    rng = torch.get_rng_state()
    measured = runtime.tuned_cpu_chunk(runner)
    assert not measured["cached"]
    assert measured["chunk"] in runtime.CPU_CHUNK_CANDIDATES
    assert measured["seconds"][str(measured["chunk"])] == min(measured["seconds"].values())  # the fastest
    assert set(measured["seconds"]) == {str(c) for c in runtime.CPU_CHUNK_CANDIDATES}
    assert torch.equal(torch.get_rng_state(), rng)  # training draws the same numbers as without the measurement
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in runner.model.parameters())
    table = json.loads((tmp_path / "cpu_network_chunk.json").read_text())
    (key, entry), = table.items()
    assert runtime.machine_description() in key and "NeRFModel(" in key and "float32" in key
    assert entry["chunk"] == measured["chunk"]

    monkeypatch.setattr(runtime, "measure_cpu_chunks", lambda *a, **k: pytest.fail("measured again"))
    again = FieldRunner(NeRFModel(**SMALL))
    assert again.cpu_chunk() == measured["chunk"]
    assert network_chunk(65536, torch.device("cpu"), again) == measured["chunk"]
    assert network_chunk(100, torch.device("cpu"), again) == 100  # netchunk stays the memory bound
    # another width or precision is another entry, measured by itself
    with pytest.raises(pytest.fail.Exception):
        FieldRunner(NeRFModel(num_layers=2, hidden_size=16, skip_connect_every=0, hidden_size_dir=8)).cpu_chunk()
    with pytest.raises(pytest.fail.Exception):
        FieldRunner(NeRFModel(**SMALL), dtype=torch.bfloat16).cpu_chunk()


def test_the_chunk_measurement_casts_the_weights_per_call_as_training_does(monkeypatch):
    """Autocast is entered for each call, as FieldRunner.forward does in training: its cast weights (and their
    gradients cast back) are per chunk, a cost that grows with the number of chunks, not once per pass."""
    import contextlib

    runner = FieldRunner(NeRFModel(**SMALL), dtype=torch.bfloat16)
    entered = []

    @contextlib.contextmanager
    def counting_autocast(device):
        entered.append(device.type)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield

    monkeypatch.setattr(runner, "_autocast", counting_autocast)
    seconds = runtime.measure_cpu_chunks(runner, candidates=(64, 128), points=256, rounds=1)
    assert set(seconds) == {64, 128}
    assert entered == ["cpu"] * (2 + 4 + 2)  # warm-up at 128 points (2 calls), then 64 (4 calls) and 128 (2)


def test_a_configured_cpu_chunk_is_used_without_measuring(monkeypatch):
    monkeypatch.setattr(runtime, "measure_cpu_chunks", lambda *a, **k: pytest.fail("measured"))
    coarse, fine = field_runners(NeRFModel(**SMALL), NeRFModel(**SMALL), RuntimeConfig(cpu_network_chunk=1234),
                                 torch.device("cpu"))
    assert coarse.cpu_chunk() == fine.cpu_chunk() == 1234
    assert coarse.chunk_report == {"chunk": 1234, "source": "runtime.cpu_network_chunk"}


@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_every_candidate_chunk_gives_the_paper_model_the_same_forward_bit_for_bit(dtype):
    """Whatever size a machine picks, the forward pass (hence rendering and the loss) is the same; only the
    summation order of the weight gradients depends on it."""
    model = NeRFModel()
    points, dirs = _inputs(9000)
    whole = FieldRunner(model, dtype)(points, dirs)
    for chunk in runtime.CPU_CHUNK_CANDIDATES:
        assert torch.equal(evaluate_points(FieldRunner(model, dtype, cpu_chunk=chunk), points, dirs, 65536), whole), chunk


def test_a_voxel_grid_keeps_the_fixed_chunk_and_is_never_measured(monkeypatch):
    monkeypatch.setattr(runtime, "measure_cpu_chunks", lambda *a, **k: pytest.fail("measured"))
    grid = build_model(ModelConfig(type="VoxelGridModel"))
    assert FieldRunner(grid).cpu_chunk() == CPU_NETWORK_CHUNK


def test_a_grid_fields_density_passes_run_in_large_calls_with_the_same_result():
    """The density-only passes (early termination, occupancy updates) of a grid field run in calls of
    CPU_GRID_DENSITY_CHUNK points, an MLP's in its cache-sized chunk; the densities equal one call's."""
    grid = build_model(ModelConfig(type="VoxelGridModel"))
    with torch.no_grad():
        grid.density_grid.normal_(generator=torch.Generator().manual_seed(0))
    runner, mlp = FieldRunner(grid), FieldRunner(NeRFModel(**SMALL), cpu_chunk=1024)
    cpu = torch.device("cpu")
    assert network_chunk(1 << 20, cpu, runner, density_only=True) == runtime.CPU_GRID_DENSITY_CHUNK
    assert network_chunk(1000, cpu, runner, density_only=True) == 1000  # netchunk stays the memory bound
    assert network_chunk(1 << 20, cpu, mlp, density_only=True) == 1024
    assert network_chunk(1 << 20, torch.device("cuda"), runner, density_only=True) == 1 << 20
    points = torch.rand(3 * runtime.CPU_GRID_DENSITY_CHUNK + 5, 3, generator=torch.Generator().manual_seed(1)) * 3 - 1.5
    calls = []
    counted = lambda x: calls.append(len(x)) or runner.density(x)  # noqa: E731
    counted.__self__ = runner
    sigma = runtime.evaluate_density(counted, points, 1 << 20)
    assert calls == [runtime.CPU_GRID_DENSITY_CHUNK] * 3 + [5]
    torch.testing.assert_close(sigma, torch.relu(runner.density(points)), rtol=1e-6, atol=0)


def test_an_unwritable_cache_warns_and_still_gives_a_chunk(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("NERF_CACHE_DIR", str(blocker / "cache"))
    with pytest.warns(UserWarning, match="could not be cached"):
        chunk = FieldRunner(NeRFModel(**SMALL)).cpu_chunk()
    assert chunk in runtime.CPU_CHUNK_CANDIDATES


def test_a_negative_cpu_chunk_is_a_config_error(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text(f"dataset:\n  basedir: {tmp_path}\nruntime:\n  cpu_network_chunk: -1\n")
    with pytest.raises(ConfigError, match="runtime.cpu_network_chunk"):
        load_config(str(path))


def test_bf16_on_a_cpu_without_a_fast_bf16_path_warns(tmp_path, monkeypatch):
    monkeypatch.setenv("NERF_CACHE_DIR", str(tmp_path))
    measured = runtime.cpu_bf16_speedup()
    assert measured > 0
    assert runtime.cpu_bf16_speedup() == measured  # read back from the cache
    monkeypatch.setattr(runtime, "cpu_bf16_speedup", lambda: 0.6)
    with pytest.warns(UserWarning, match="bf16 matrices at 0.60x its fp32 speed"):
        field_runners(NeRFModel(**SMALL), None, RuntimeConfig(precision="bf16"), torch.device("cpu"))
    monkeypatch.setattr(runtime, "cpu_bf16_speedup", lambda: 1.8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        field_runners(NeRFModel(**SMALL), None, RuntimeConfig(precision="bf16"), torch.device("cpu"))


FAULTS_OF_REALLOCATIONS = """
import resource, sys, torch
from nerf import runtime
if sys.argv[1] == "keep":
    assert runtime.keep_freed_cpu_memory()
faults = []
for _ in range(14):  # 64 MiB: above any mmap threshold glibc adapts to (32 MiB at most)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.empty(16 << 20).fill_(1.0)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del block
# the first rounds grow the heap: a freed block is a little short of the next aligned request (the 64-byte
# alignment adds to it), so new blocks are taken from the top until two freed ones lie side by side and merge;
# with small objects of the process in between that took up to seven blocks in 4 runs of 14 rounds
print(" ".join(map(str, faults[10:])))
"""
# what would replace or tune glibc's malloc in the child
ALLOCATOR_ENVIRONMENT = ("LD_PRELOAD", "GLIBC_TUNABLES", "THP_MEM_ALLOC_ENABLE")


def _environment_without_allocator_settings() -> dict:
    """This process's environment less what would replace or tune glibc's malloc in a child."""
    return {k: v for k, v in os.environ.items() if k not in ALLOCATOR_ENVIRONMENT and not k.startswith("MALLOC_")}


def _page_faults_of_reallocations(mode: str) -> list[int]:
    """Page faults of each of four 64 MiB tensors, each freed before the next (after ten rounds)."""
    env = _environment_without_allocator_settings()
    done = subprocess.run([sys.executable, "-c", FAULTS_OF_REALLOCATIONS, mode], cwd=ROOT, capture_output=True,
                          text=True, check=True, env=env)
    return [int(n) for n in done.stdout.split()]


@pytest.mark.skipif(not runtime.has_glibc_malloc(), reason="glibc's malloc only")
def test_kept_cpu_memory_is_reused_without_page_faults():
    """A 64 MiB tensor freed and asked for again: kept, its pages stay mapped; with glibc's defaults it is
    unmapped and its 16384 pages of 4 KiB are faulted in each time."""
    assert all(n < 250 for n in _page_faults_of_reallocations("keep"))
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled", encoding="utf-8") as f:
            huge_pages_always = "[always]" in f.read()
    except OSError:
        huge_pages_always = False
    if not huge_pages_always:  # 2 MiB pages would fault 32 times only
        assert all(n > 16000 for n in _page_faults_of_reallocations("system"))


def test_keeping_cpu_memory_is_applied_once_and_only_on_glibc(monkeypatch):
    monkeypatch.setattr(runtime, "_freed_memory_kept", False)
    monkeypatch.setattr(runtime, "has_glibc_malloc", lambda: False)
    assert real_keep_freed_cpu_memory() is False and not runtime.freed_cpu_memory_kept()
    monkeypatch.setattr(runtime, "_freed_memory_kept", True)
    monkeypatch.setattr(runtime.ctypes, "CDLL", lambda *a: pytest.fail("mallopt called twice"))
    assert real_keep_freed_cpu_memory() is True


def test_the_allocator_is_looked_up_once_per_process(monkeypatch):
    """find_library runs a subprocess on Linux: the answer, true or false, is cached."""
    calls = []
    real_find_library = runtime.ctypes.util.find_library
    monkeypatch.setattr(runtime.ctypes.util, "find_library",
                        lambda name: calls.append(name) or real_find_library(name))
    runtime.has_glibc_malloc.cache_clear()
    try:
        first, second = runtime.has_glibc_malloc(), runtime.has_glibc_malloc()
    finally:
        runtime.has_glibc_malloc.cache_clear()
    assert first == second
    on_glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert len(calls) == (1 if on_glibc else 0)


MALLOC_INTERPOSER = """
#include <stddef.h>
extern void *__libc_malloc(size_t);
void *malloc(size_t size) { return __libc_malloc(size); }
"""
REPORT_ALLOCATOR = "from nerf import runtime; print(runtime.has_glibc_malloc(), runtime.keep_freed_cpu_memory())"


@pytest.mark.skipif(not runtime.has_glibc_malloc(), reason="glibc's malloc only")
def test_memory_is_not_said_kept_where_another_malloc_is_preloaded(tmp_path):
    """A library preloaded in glibc's place (as jemalloc or tcmalloc are) takes the process's malloc: mallopt
    would tune glibc's unused one, so nothing is applied and nothing claimed."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build a malloc interposer")
    (tmp_path / "interposer.c").write_text(MALLOC_INTERPOSER)
    library = tmp_path / "libinterposer.so"
    built = subprocess.run([compiler, "-shared", "-fPIC", "-o", str(library), str(tmp_path / "interposer.c")],
                           capture_output=True, text=True)
    if built.returncode != 0:
        pytest.skip(f"could not build a malloc interposer: {built.stderr.strip()[:200]}")
    env = _environment_without_allocator_settings()

    def report(extra: dict) -> list[str]:
        done = subprocess.run([sys.executable, "-c", REPORT_ALLOCATOR], cwd=ROOT, capture_output=True, text=True,
                              check=True, env={**env, **extra})
        if "cannot be preloaded" in done.stderr:  # e.g. a noexec temporary folder: ld.so ignored it
            pytest.skip(f"the interposer could not be preloaded: {done.stderr.strip()[:200]}")
        return done.stdout.split()

    assert report({}) == ["True", "True"]
    assert report({"LD_PRELOAD": str(library)}) == ["False", "False"]


def test_field_runners_keep_cpu_memory_only_when_configured_on_the_cpu(monkeypatch):
    calls = []
    monkeypatch.setattr(runtime, "keep_freed_cpu_memory", lambda: calls.append(1) or True)
    field_runners(NeRFModel(**SMALL), None, RuntimeConfig(keep_cpu_memory=False, cpu_network_chunk=1024),
                  torch.device("cpu"))
    assert calls == []
    field_runners(NeRFModel(**SMALL), None, RuntimeConfig(cpu_network_chunk=1024), torch.device("meta"))
    assert calls == []
    field_runners(NeRFModel(**SMALL), None, RuntimeConfig(cpu_network_chunk=1024), torch.device("cpu"))
    assert calls == [1]


def test_keep_cpu_memory_is_a_boolean_key():
    preset = os.path.join(ROOT, "config", "lego_fast.yml")
    assert load_config(preset).runtime.keep_cpu_memory is True
    assert load_config(preset, ["runtime.keep_cpu_memory=false"]).runtime.keep_cpu_memory is False
    with pytest.raises(ConfigError, match="runtime.keep_cpu_memory' expects bool"):
        load_config(preset, ["runtime.keep_cpu_memory=3"])
