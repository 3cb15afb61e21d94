"""``python -m bench``: the benchmark suite against PEFT and the bare base model.

Sections (``--sections 1,3`` or names): 1 apply, 2 step, 3 mixed, 4 switch,
5 bundles. Prints a table and writes ``bench/results/<tag>.json`` and
``<tag>.md``. With a CUDA device, sections 2 and 3 run again there in bf16 at
the Llama-3.2-1B shape, sequence 1024 (``--device cpu`` skips that).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

SECTIONS = {"1": "apply", "2": "step", "3": "mixed", "4": "switch", "5": "bundles"}
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="1,2,3,4,5",
                        help="comma-separated numbers or names (default: all): " +
                             ", ".join(f"{k} {v}" for k, v in SECTIONS.items()))
    parser.add_argument("--quick", action="store_true", help="fewer rounds (and fewer K in section 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: CPU, plus CUDA when present (default)")
    parser.add_argument("--tag", default=None, help="results file name (default: a timestamp)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results folder (default {RESULTS})")
    return parser.parse_args(argv)


def chosen(spec: str) -> list[str]:
    """Section numbers from ``1,2`` or ``apply,step``."""
    names = {v: k for k, v in SECTIONS.items()}
    out = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        key = item if item in SECTIONS else names.get(item)
        if key is None:
            raise SystemExit(f"unknown section '{item}' (choose from {', '.join(SECTIONS)} or "
                             f"{', '.join(SECTIONS.values())})")
        out.append(key)
    return sorted(set(out))


def runners() -> dict[str, Callable[..., Any]]:
    from bench import sec_apply, sec_bundles, sec_mixed, sec_step, sec_switch

    return {"1": sec_apply.run, "2": sec_step.run, "3": sec_mixed.run, "4": sec_switch.run, "5": sec_bundles.run}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    warnings.filterwarnings("ignore")  # library deprecation chatter would bury the table
    torch.set_num_threads(args.threads)
    from bench.report import environment, print_table, write_results
    from bench.setups import cpu_setting, cuda_setting

    sections = chosen(args.sections)
    settings = [cpu_setting()] if args.device in ("auto", "cpu") else []
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device")
        settings.append(cuda_setting())
    command = "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)
    tag = args.tag or time.strftime("%Y%m%d-%H%M%S")
    run = runners()
    for setting in settings:
        rows = []
        for key in sections:
            if setting.name != "cpu" and key not in ("2", "3"):
                continue  # structure-only sections (meta device, files) do not depend on the device
            start = time.perf_counter()
            print(f"[bench] {setting.name}: section {key} {SECTIONS[key]} ...", file=sys.stderr, flush=True)
            rows += run[key](setting, args.quick)
            print(f"[bench]   done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        dtype = str(setting.dtype).removeprefix("torch.")
        env = environment(setting.name, torch.get_num_threads(), dtype, command.strip())
        print_table(rows, env)
        json_path, md_path = write_results(rows, env, args.out, f"{tag}-{setting.name}")
        print(f"results: {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
