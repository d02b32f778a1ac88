"""The OpenAI-compatible server through the `openai` client: what a kept conversation saves on a follow-up.

    python bench/bench_openai_api.py                      # a random checkpoint (BENCH shape), CPU, float32
    python bench/bench_openai_api.py --model ./PixelRefer-2B --device cuda --dtype bfloat16

For a picture with two objects (sent as a PNG data URL with two COCO RLE regions) it times, median of
--repeats, the first question, a follow-up that continues the kept conversation, and the same follow-up
from another client (rebuilt from the request: picture decoded, features, object tokens and prompt computed
again), each as the client sees it (total, and first streamed piece for the first question), with the
prompt tokens reused from the cache.
"""

from __future__ import annotations

import argparse
import base64
import io
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import openai  # noqa: E402
import uvicorn  # noqa: E402
from PIL import Image  # noqa: E402

from pixelrefer import PixelRefer  # noqa: E402
from pixelrefer.media.masks import mask_to_rle  # noqa: E402
from pixelrefer.model.synthetic import BENCH, TINY, build_checkpoint  # noqa: E402
from pixelrefer.serve.openai_api import ApiOptions, OpenAIServer  # noqa: E402
from pixelrefer.serve.service import AppSettings  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from scenes import disc_mask, textured  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


QUESTION = "What is the relationship between <object1> and <object2>?"
FOLLOW_UP = "Which of them is larger, <object2>?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="", help="a checkpoint folder (default: a random BENCH-shaped one)"
    )
    parser.add_argument(
        "--shape", default="bench", choices=["bench", "tiny"], help="the random checkpoint's size"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--size", type=int, default=640, help="the picture's width (height 3/4 of it)")
    parser.add_argument("--tokens", type=int, default=16, help="new tokens per answer")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    shape = {"bench": BENCH, "tiny": TINY}[args.shape]
    folder = args.model or str(build_checkpoint(Path(tempfile.mkdtemp()) / args.shape, shape=shape, seed=0))
    model = PixelRefer.from_pretrained(folder, device=args.device, dtype=args.dtype)
    settings = AppSettings(model=folder, max_new_tokens=args.tokens)
    server = OpenAIServer(model, settings, ApiOptions(api_keys=("a", "b")), name="bench")
    port = free_port()
    web = uvicorn.Server(uvicorn.Config(server.app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=web.run, daemon=True).start()
    while not web.started:
        time.sleep(0.01)

    width, height = args.size, args.size * 3 // 4
    buffer = io.BytesIO()
    Image.fromarray(textured(height, width, 0)).save(buffer, format="PNG")
    picture = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    regions = [
        mask_to_rle(disc_mask(height, width, (width // 3, height // 3), height // 6)),
        mask_to_rle(disc_mask(height, width, (2 * width // 3, 2 * height // 3), height // 5)),
    ]
    first_message = {
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": picture}}, {"type": "text", "text": QUESTION}],
    }
    clients = {
        key: openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0) for key in "ab"
    }

    def ask(key: str, messages: list, stream: bool = False) -> tuple[float, float, object]:
        started = time.perf_counter()
        call = clients[key].chat.completions.create(
            model="bench",
            messages=messages,
            max_tokens=args.tokens,
            stream=stream,
            extra_body={"regions": regions},
        )
        if not stream:
            return time.perf_counter() - started, 0.0, call
        first = 0.0
        for chunk in call:
            if not first and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - started
        return time.perf_counter() - started, first, None

    rows: dict[str, list[float]] = {k: [] for k in ("first", "first piece", "continued", "rebuilt")}
    cached = {"continued": 0, "rebuilt": 0}
    ask("a", [first_message])  # warm-up (one-off allocations)
    for _ in range(args.repeats):
        total, _, reply = ask("a", [first_message])
        rows["first"].append(total)
        rows["first piece"].append(ask("a", [first_message], stream=True)[1])
        history = [
            first_message,
            {"role": "assistant", "content": reply.choices[0].message.content},
            {"role": "user", "content": FOLLOW_UP},
        ]
        total, _, continued = ask("a", history)
        assert continued.pixelrefer["conversation"] == "continued"
        rows["continued"].append(total)
        cached["continued"] = continued.usage.prompt_tokens_details.cached_tokens
        total, _, rebuilt = ask("b", history)
        assert rebuilt.pixelrefer["conversation"] == "new"
        rows["rebuilt"].append(total)
        cached["rebuilt"] = rebuilt.usage.prompt_tokens_details.cached_tokens
        prompt = continued.usage.prompt_tokens
        print("  repeat:", {name: f"{values[-1] * 1000:.0f} ms" for name, values in rows.items()}, flush=True)
    print(
        f"model {Path(folder).name} on {args.device} ({args.dtype}), picture {width}x{height}, 2 objects, "
        f"{args.tokens} new tokens, median of {args.repeats}; follow-up prompt {prompt} tokens"
    )
    for name, values in rows.items():
        note = f"  (cached prompt tokens {cached[name]})" if name in cached else ""
        print(f"  {name:<12} {statistics.median(values) * 1000:8.0f} ms{note}")
    web.should_exit = True


if __name__ == "__main__":
    main()
