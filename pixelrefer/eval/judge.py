"""The LLM judge: chat completions from any OpenAI-compatible endpoint, retried, cached on disk.

The official judged scorers call GPT-4/4o through the `openai` client with the model's default sampling
(no temperature is sent) and retry failed calls (5 times, or forever). Here a call is a plain HTTP POST to
`{url}/chat/completions`; a failed call (connection error, HTTP 429/5xx, a reply without a message) is
retried up to `retries` more times with a growing pause, and a judge that still fails stops the scoring
with a message (the official loops would spin forever or silently drop the item). Every answer is
appended to a JSONL cache keyed by model and messages, so a rerun asks only what was not answered yet.
The API key is read from the environment (PIXELREFER_JUDGE_KEY, else OPENAI_API_KEY, else API_KEY as
the official scripts name it) and never written anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ..runtime.errors import InputError

__all__ = ["Judge", "JudgeError", "judge_key"]

_KEY_VARIABLES = ("PIXELREFER_JUDGE_KEY", "OPENAI_API_KEY", "API_KEY")
_RETRYABLE = {408, 409, 429, 500, 502, 503, 504}
T = TypeVar("T")


class JudgeError(InputError):
    """The judge endpoint could not give an answer (unreachable, refused, or kept failing)."""


def judge_key() -> str | None:
    """The API key from the environment, if any (a local endpoint may need none)."""
    return next((os.environ[name] for name in _KEY_VARIABLES if os.environ.get(name)), None)


class Judge:
    """Asks one model at one endpoint; `ask` returns the reply text of one chat completion."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        key: str | None = None,
        retries: int = 5,
        timeout_s: float = 120.0,
        pause_s: float = 0.5,
        cache: Path | None = None,
        workers: int = 4,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise InputError(f"--judge-url must be an http(s) URL, got {url!r}")
        if not model:
            raise InputError("--judge-model is needed for the judged benchmarks")
        self.url = url.rstrip("/") + "/chat/completions"
        self.model = model
        self.key = key if key is not None else judge_key()
        self.retries = max(0, retries)
        self.timeout_s = timeout_s
        self.pause_s = pause_s
        self.workers = max(1, workers)
        self.calls = 0
        self._cache_path = cache
        self._cache: dict[str, str] = {}
        self._lock = threading.Lock()
        if cache is not None and cache.is_file():
            for line in cache.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                    self._cache[entry["key"]] = entry["reply"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line cut by an interrupted run

    def _key(self, messages: list[dict[str, Any]], attempt: int) -> str:
        text = json.dumps([self.model, messages, attempt], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def _post(self, messages: list[dict[str, Any]]) -> str:
        body = json.dumps({"model": self.model, "messages": messages}).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            reply = json.loads(response.read().decode("utf-8"))
        content = reply["choices"][0]["message"]["content"]
        if not isinstance(content, str):
            raise ValueError("the reply has no message text")
        return content

    def ask(self, messages: list[dict[str, Any]], attempt: int = 0) -> str:
        """The judge's reply; `attempt` > 0 asks again for the same messages (a reply that did not parse)."""
        key = self._key(messages, attempt)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        problem = ""
        for tried in range(self.retries + 1):
            if tried:
                time.sleep(self.pause_s * tried)
            with self._lock:
                self.calls += 1
            try:
                reply = self._post(messages)
            except urllib.error.HTTPError as exc:
                problem = f"HTTP {exc.code}"
                if exc.code not in _RETRYABLE:
                    raise JudgeError(f"the judge at {self.url} refused the request: {problem}") from None
                continue
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                problem = str(getattr(exc, "reason", exc))
                continue
            except (ValueError, KeyError, IndexError, TypeError):
                problem = "a reply without a chat message"
                continue
            self._remember(key, reply)
            return reply
        raise JudgeError(
            f"the judge at {self.url} failed {self.retries + 1} times ({problem}); "
            "answers so far are cached, rerun to go on"
        )

    def _remember(self, key: str, reply: str) -> None:
        with self._lock:
            self._cache[key] = reply
            if self._cache_path is not None:
                self._cache_path.parent.mkdir(parents=True, exist_ok=True)
                with self._cache_path.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps({"key": key, "reply": reply}, ensure_ascii=False) + "\n")

    def map(self, work: Callable[[Any], T], jobs: list[Any]) -> list[T]:
        """`work` over `jobs` on `workers` threads, results in the jobs' order."""
        if self.workers == 1 or len(jobs) < 2:
            return [work(job) for job in jobs]
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(work, jobs))
