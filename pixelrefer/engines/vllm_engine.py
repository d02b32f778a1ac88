"""The vLLM engine: prompt embeddings go to a vLLM server (OpenAI completions API), token ids stream back.

Settings map one to one onto the transformers path: greedy is temperature 0; sampling uses the official
temperature 0.2 / top-p 0.9 defaults and the checkpoint's top-k (50 when the file has none); the
checkpoint's repetition penalty runs on the generated ids only (server_side/); the eos ids stop decoding
and are returned as the last token. A seed makes sampling repeatable on this engine; its draws differ
from the transformers engine's, whose random stream is torch's. Stop, a closed stream (a visitor who
left) and the time budget close the HTTP response, which aborts the request in the server.
"""

from __future__ import annotations

import base64
import io
import json
import secrets
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Iterator

import torch
from transformers import GenerationConfig

from ..model.generation import OFFICIAL_DEFAULT_TOP_K, GenerationSettings, GenerationTimeout, StepOutput
from .base import DecodeEngine, DecodeRequest, EngineUnavailable

__all__ = ["VllmEngine", "encode_embeds"]


def encode_embeds(rows: torch.Tensor) -> str:
    """(L, D) rows as vLLM reads them: a torch-saved tensor, base64."""
    buffer = io.BytesIO()
    torch.save(rows.detach().cpu().contiguous(), buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class VllmEngine(DecodeEngine):
    """A client of a vLLM server that serves the checkpoint's exported LLM under `model_name`.

    `server` (a `VllmServer` this process started) is closed with the engine; a server given by `url`
    is only used. `verify` first checks that the server serves this LLM. `max_concurrency` is the server's `max_num_seqs`: the app lets that many answers run.
    """

    name = "vllm"

    def __init__(
        self,
        url: str,
        model_name: str,
        generation_config: GenerationConfig,
        *,
        dtype: torch.dtype = torch.float32,
        max_concurrency: int = 16,
        server: object | None = None,
        request_timeout_s: float = 600.0,
        verify: bool = True,
    ) -> None:
        self.url = url.rstrip("/")
        self.model_name = model_name
        self._generation_config = generation_config
        self._dtype = dtype
        self._max_concurrency = max_concurrency
        self._server = server
        self._timeout = request_timeout_s
        self._salts: dict[int, str] = {}
        if verify:
            self.check()

    @property
    def max_concurrency(self) -> int:
        return self._max_concurrency

    @property
    def server(self) -> object | None:
        """The `VllmServer` this engine started and stops (None for a server given by URL)."""
        return self._server

    def check(self) -> None:
        """The server answers and serves this checkpoint's LLM (not another model's)."""
        try:
            with urllib.request.urlopen(f"{self.url}/v1/models", timeout=10) as response:
                served = [m["id"] for m in json.load(response)["data"]]
        except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
            raise EngineUnavailable(f"No vLLM server answers at {self.url} ({type(exc).__name__})") from exc
        if self.model_name not in served:
            raise EngineUnavailable(
                f"The vLLM server at {self.url} serves {', '.join(served) or 'nothing'}, not this checkpoint's "
                f"LLM ({self.model_name}); start it with `python -m pixelrefer engine --model ...`"
            )

    def payload(self, request: DecodeRequest) -> dict:
        """The completions request equal to the transformers path's settings."""
        settings: GenerationSettings = request.settings
        config = self._generation_config
        body: dict = {
            "model": self.model_name,
            "prompt_embeds": encode_embeds(request.inputs_embeds[0].to(self._dtype)),
            "max_tokens": settings.max_new_tokens,
            "stop_token_ids": sorted(request.eos_ids),
            "skip_special_tokens": False,
            "return_token_ids": True,
            "stream": True,
            "seed": settings.seed,
            "repetition_penalty": 1.0,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "min_p": 0.0,
        }
        if settings.do_sample:
            body["temperature"] = 0.2 if settings.temperature is None else settings.temperature
            body["top_p"] = 0.9 if settings.top_p is None else settings.top_p
            body["top_k"] = OFFICIAL_DEFAULT_TOP_K if config.top_k is None else int(config.top_k) or -1
        else:
            body.update(temperature=0.0, top_p=1.0, top_k=-1)
        penalty = config.repetition_penalty
        if penalty is not None and penalty != 1.0:
            body["vllm_xargs"] = {"generated_repetition_penalty": float(penalty)}
        if request.prefix is not None:
            # The server's prefix cache is shared; a per-conversation salt keeps one visitor's cached
            # rows from ever answering (or timing) another's.
            body["cache_salt"] = self._salt(request.prefix)
        return body

    def _salt(self, conversation: object) -> str:
        key = id(conversation)
        if key not in self._salts:
            self._salts[key] = secrets.token_urlsafe(32)
            weakref.finalize(conversation, self._salts.pop, key, None)
        return self._salts[key]

    def decode(self, request: DecodeRequest) -> Iterator[StepOutput]:
        if request.keep_first_logits:
            raise ValueError("First-step logits come only from the transformers engine")
        data = json.dumps(self.payload(request)).encode()
        http = urllib.request.Request(
            f"{self.url}/v1/completions", data=data, headers={"Content-Type": "application/json"}
        )
        try:
            response = urllib.request.urlopen(http, timeout=self._timeout)
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"The vLLM engine refused the request: {_error_message(exc)}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise EngineUnavailable(f"The vLLM engine at {self.url} cannot be reached ({exc})") from exc
        count = 0
        try:
            for line in response:
                if not line.startswith(b"data:"):
                    continue
                body = line[5:].strip()
                if body == b"[DONE]":
                    break
                chunk = json.loads(body)
                if "error" in chunk:
                    raise RuntimeError(
                        f"The vLLM engine failed: {chunk['error'].get('message', chunk['error'])}"
                    )
                for choice in chunk.get("choices", []):
                    for token in choice.get("token_ids") or []:
                        count += 1
                        yield StepOutput(int(token))
                        if int(token) in request.eos_ids or count >= request.settings.max_new_tokens:
                            return
                if request.stop is not None and request.stop.is_set():
                    return
                if request.deadline is not None and time.monotonic() > request.deadline:
                    raise GenerationTimeout("The answer took longer than its time budget")
        finally:
            response.close()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read())
        return str(body.get("error", {}).get("message") or body.get("message") or body)
    except (ValueError, OSError, AttributeError):
        return f"HTTP {exc.code}"
