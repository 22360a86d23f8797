"""Hand-written C++ kernels for the CPU, built on first use (``torch.utils.cpp_extension``).

DiGraP's and FTP's Adam/AdamW steps of large float32 tensors have one (``csrc/adam_cpu.cpp``,
one call per tensor: statistics pass, per-tensor scalars, update). In
``benchmarks/bench_optim.py`` on 63 M parameters, DiGraP's takes 1.65-2.01x fused AdamW where
the ``torch.compile`` kernels take 1.99-2.57x in the same runs, FTP's 2.26-2.95x against
2.81-3.16x: between inductor's statistics
graph, scalar graph and update kernel, Python and dispatch run on caches the tensor just
streamed through (a ~30 us scalar graph call took ~210 us there). Everything else runs the
kernels of :mod:`._kernels`, which stay the reference the C++ step is tested against.

The first use compiles the source with the machine's C++ compiler (about 20-40 s) into
torch's extension cache (``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``);
later processes load it from there. Without a compiler or ninja, or when the build fails, the
optimizers warn once and keep the compiled path: the same numbers, only slower. Set
``VQA_OOD_BENCH_NATIVE=0`` to never build or use it.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

__all__ = ["enabled", "load", "runs_natively"]

_SOURCE = Path(__file__).with_name("csrc") / "adam_cpu.cpp"
#: -fno-math-errno: without it sqrt keeps a scalar errno path and the loops do not vectorise
#: (4x slower); -fopenmp: at::parallel_for is inline OpenMP code, serial without it (1.3x
#: slower on 2 cores). The OpenMP runtime is torch's own: it is loaded first, under the same
#: name (libgomp.so.1), so the extension shares its thread pool.
_CFLAGS = ["-O3", "-fno-math-errno", "-fopenmp"]
_LDFLAGS = ["-fopenmp"]

_lock = threading.Lock()
_state: dict[str, Any] = {"module": None, "tried": False}


def enabled() -> bool:
    """False when ``VQA_OOD_BENCH_NATIVE`` is set to 0/false/no/off."""
    return os.environ.get("VQA_OOD_BENCH_NATIVE", "1").strip().lower() not in {"0", "false", "no", "off"}


def _ninja_on_path() -> None:
    """torch's builder runs ``ninja`` from PATH; the ``ninja`` wheel puts it in the virtual
    environment's bin folder, which is not on PATH unless the environment is activated."""
    if shutil.which("ninja"):
        return
    try:
        import ninja  # type: ignore[import-not-found]

        bin_dir = getattr(ninja, "BIN_DIR", None)
    except ImportError:
        bin_dir = str(Path(sys.executable).parent)
    if bin_dir and (Path(bin_dir) / "ninja").exists():
        os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"


def load() -> ModuleType | None:
    """The built extension, or ``None`` (disabled, or the build failed: warned once)."""
    if not enabled():
        return None
    with _lock:
        if not _state["tried"]:
            _state["tried"] = True
            try:
                from torch.utils.cpp_extension import load as build

                _ninja_on_path()
                _state["module"] = build(
                    name="vqa_ood_bench_optim_cpu", sources=[str(_SOURCE)], extra_cflags=_CFLAGS, extra_ldflags=_LDFLAGS,
                    verbose=False,
                )
            except Exception as exc:  # noqa: BLE001 - any build failure: keep the compiled path
                warnings.warn(
                    f"building the C++ kernels of DiGraP and FTP failed ({type(exc).__name__}: {str(exc)[:300]}); "
                    "running the torch.compile kernels instead (same results, slower)",
                    stacklevel=3,
                )
        return _state["module"]


def runs_natively(p: torch.Tensor) -> bool:
    """Whether a tensor (a direct bucket's parameter) can take the C++ kernels."""
    return p.device.type == "cpu" and p.dtype == torch.float32 and p.is_contiguous()
