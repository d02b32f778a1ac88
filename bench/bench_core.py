"""End-to-end time of the core model on every parity fixture case, next to the official reference's numbers.

Per case: one `generate` with 8 greedy new tokens from the case's inputs (prepare, vision and object
encoding, splice, decode; the checkpoint load is excluded), and one forward pass
(`model.logits(model.embed(prepared))`: vision encoding, object encoding and the LLM without a cache,
the same span as the reference's measured `model.forward`). Each is timed over several runs after one
warm-up; median and min are printed. The reference columns come from each variant's `timing.json`
(official code, torch 2.13 + transformers 4.46.3, 2 threads): a different run on the same kind of
machine, recorded for `image_1region` only.

    python bench/bench_core.py                     # 2 threads, 7 runs per measurement
    python bench/bench_core.py --runs 15 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pixelrefer import GenerationSettings, PixelRefer, Prepared  # noqa: E402
from tests.test_parity import build_call as case_call  # noqa: E402  (the parity test's reading rules)
from tests.test_parity import fixtures_root  # noqa: E402


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    fn()  # warm-up, discarded
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def forward_pass(model: PixelRefer, prepared: Prepared) -> torch.Tensor:
    """Vision and object encoding, the splice and one LLM pass without a cache."""
    return model.logits(model.embed(prepared))


def reference(variant_dir: Path) -> dict:
    path = variant_dir / "timing.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)

    root = fixtures_root()
    rows = []
    for variant_dir in sorted(p for p in root.iterdir() if (p / "checkpoint").is_dir()):
        model = PixelRefer.from_pretrained(str(variant_dir / "checkpoint"), device="cpu", dtype="float32")
        ref = reference(variant_dir)
        for case_path in sorted(variant_dir.glob("cases/*/case.json")):
            case = json.loads(case_path.read_text())
            seed = case.get("seed_before_generate_and_forward", 1234)
            call = case_call(case_path.parent, case, model.variant)
            settings = GenerationSettings(max_new_tokens=8, do_sample=False, seed=seed)
            prepared = model.prepare(instruction=case["question"], seed=seed, **call)

            generate = partial(model.generate, instruction=case["question"], settings=settings, **call)
            forward = partial(forward_pass, model, prepared)

            result = generate()
            end_to_end = timed(generate, args.runs)
            forward_s = timed(forward, args.runs)
            same = ref.get("case") == case_path.parent.name
            rounds = ref.get("rounds", []) if same else []
            rows.append(
                {
                    "case": f"{variant_dir.name}/{case_path.parent.name}",
                    "ids_match": result.token_ids == case["generated_ids"],
                    "gen_median": statistics.median(end_to_end),
                    "gen_min": min(end_to_end),
                    "fwd_median": statistics.median(forward_s),
                    "fwd_min": min(forward_s),
                    "ref_fwd": ref.get("best_round_forward_median_s") if same else None,
                    "ref_gen": [r["mm_infer_8tok_median_s"] for r in rounds],
                }
            )

    load = os.getloadavg()
    print(
        f"pixelrefer core bench: torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} cores, {args.runs} runs after 1 warm-up, load average {load[0]:.2f}"
    )
    print("ours = this run; ref = official code (timing.json: torch 2.13, transformers 4.46.3, 2 threads),")
    print("measured in a different run on the same kind of machine, image_1region only.")
    header = (
        f"{'case':40} {'ids':>4} {'generate 8 tok ms':>19} {'ref mm_infer ms':>17} "
        f"{'forward ms':>14} {'ref forward ms':>15}"
    )
    print(header)
    print(f"{'':40} {'':>4} {'median':>9} {'min':>9} {'(median per round)':>17} {'median':>7} {'min':>6}")
    print("-" * len(header))
    for row in rows:
        ref_gen = ", ".join(f"{v * 1000:.0f}" for v in row["ref_gen"]) or "-"
        print(
            f"{row['case']:40} {'ok' if row['ids_match'] else 'DIFF':>4} {ms(row['gen_median']):>9} "
            f"{ms(row['gen_min']):>9} {ref_gen:>17} {ms(row['fwd_median']):>7} {ms(row['fwd_min']):>6} "
            f"{ms(row['ref_fwd']):>15}"
        )


if __name__ == "__main__":
    main()
