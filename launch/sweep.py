"""Sweep residual mode x seed on the same data, then compare.

    python launch/sweep.py --config configs/tiny_cpu.yaml --modes standard,hc,mhc,grid --seeds 3
    python launch/sweep.py --config configs/mhc_1b.yaml --seeds 3 --print-only \\
        --launcher "accelerate launch --config_file configs/accelerate/deepspeed_zero2_8gpu.yaml"
    python launch/sweep.py --config configs/depth_study.yaml --modes standard,grid --seeds 1 --out runs/depth_study
    python launch/sweep.py --config configs/tiny_cpu.yaml --modes standard,mhc,mhc[kronecker],mhc[orthogonal] --seeds 3

A mode may name mHC's H_res map in brackets (`mhc[MAP]`, MAP one of `model.h_res_map`'s choices, see
docs/manifolds.md): that run gets `model.h_res_map=MAP` and the folder OUT/mhc-MAP_seedSEED.

Each run is `launch/pretrain.py --config CONFIG model.residual_mode=MODE train.seed=SEED
run_dir=OUT/MODE_seedSEED [overrides...]`. The seed is a replicate: `train.seed` sets the model
initialisation, the torch/numpy/python RNGs and the order of the training windows (unless the
config sets `data.order_seed`, which the sweep then warns about); the prepared data, the tokenizer
and the validation windows (`data.seed`) are the same for every run. Runs go one after another (a finished run is reused, an
interrupted one resumed: pretrain.py resumes from run_dir). The data preparation is shared (same
`data` section for every run). Afterwards `python evals/compare.py OUT/* --out OUT/report` (= `python -m evals.compare`).
--print-only prints the commands (one per line, for a cluster scheduler) and the comparison
(after checking the config). Ctrl-C / SIGTERM stop the current run at a checkpoint (the sweep
waits for it) and end the sweep with exit code 4; rerunning the same command resumes.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mhc_lm.model.residual_modes import RESIDUAL_MODES  # noqa: E402

MODES = tuple(RESIDUAL_MODES)
SET_BY_SWEEP = ("model.residual_mode", "train.seed", "run_dir")  # one value per run: not overridable
EXIT_INTERRUPTED = 4  # launch/pretrain.py: stopped by a signal, checkpoint written


def split_mode(spec: str) -> tuple[str, str | None]:
    """"mhc[kronecker]" -> ("mhc", "kronecker"); "hc" -> ("hc", None)."""
    if spec.endswith("]") and "[" in spec:
        mode, h_res_map = spec[:-1].split("[", 1)
        return mode.strip(), h_res_map.strip()
    return spec, None


def parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if split_mode(m)[0] not in MODES]
    if bad or not modes:
        raise SystemExit(f"--modes: {bad or text!r} not in {list(MODES)} (comma-separated, e.g. standard,mhc or "
                         "mhc[kronecker])")
    from mhc_lm.model.h_res_maps import H_RES_MAPS

    for m in modes:
        mode, h_res_map = split_mode(m)
        if h_res_map is not None and (not RESIDUAL_MODES[mode].uses_h_res_map or h_res_map not in H_RES_MAPS):
            raise SystemExit(f"--modes: {m!r}: a map in brackets is for mhc only, one of {list(H_RES_MAPS)} "
                             "(e.g. mhc[kronecker])")
    if len(set(modes)) != len(modes):
        raise SystemExit(f"--modes: {text!r} names a mode twice")
    return modes


def mode_overrides(spec: str) -> list[str]:
    mode, h_res_map = split_mode(spec)
    return [f"model.residual_mode={mode}"] + ([f"model.h_res_map={h_res_map}"] if h_res_map else [])


def run_name(mode: str, seed: int) -> str:
    base, h_res_map = split_mode(mode)
    return f"{base}-{h_res_map}_seed{seed}" if h_res_map else f"{mode}_seed{seed}"


def build_commands(config: str, modes: list[str], seeds: list[int], out: Path, overrides: list[str],
                   launcher: str | None) -> list[tuple[Path, list[str]]]:
    """[(run_dir, argv)] for every mode x seed (mode-major order)."""
    prefix = shlex.split(launcher) if launcher else [sys.executable]
    cmds = []
    for mode in modes:
        for seed in seeds:
            run_dir = out / run_name(mode, seed)
            argv = prefix + [str(REPO / "launch" / "pretrain.py"), "--config", config,
                             *mode_overrides(mode), f"train.seed={seed}", f"run_dir={run_dir}", *overrides]
            cmds.append((run_dir, argv))
    return cmds


def check_config(config: str, overrides: list[str], modes: tuple[str, ...] = ("standard",)) -> None:
    """Fail before any run on a bad config or override (names the key, via the trainer's loader), for
    every mode of the sweep (e.g. an h_res_map that needs another n_streams), and on overrides of what
    the sweep sets per run."""
    from mhc_lm.config_utils import ConfigError
    from mhc_lm.train.config import load_run_config

    taken = [o for o in overrides if o.split("=", 1)[0].strip() in SET_BY_SWEEP]
    if taken:
        raise SystemExit(f"config error: {', '.join(taken)}: the sweep sets {', '.join(SET_BY_SWEEP)} per run "
                         "(use --modes, --seeds / --seed-offset and --out instead)")
    try:
        for mode in modes:
            # load_run_config also builds the model config: a bad mode, map or model setting fails here
            cfg = load_run_config(config, [*mode_overrides(mode), "train.seed=0", *overrides])
    except (ConfigError, FileNotFoundError, ValueError) as err:
        raise SystemExit(f"config error ({mode}): {err}") from err
    if cfg.data.order_seed is not None:
        print(f"[sweep] warning: data.order_seed={cfg.data.order_seed} is set, so every seed trains on the same "
              "data order and the seeds vary only the initialisation; unset it (data.order_seed=null) for "
              "replicates that vary both", file=sys.stderr)


def run_one(argv: list[str]) -> tuple[int, bool]:
    """Run one training command; SIGINT / SIGTERM reaching the sweep are passed on to it (it then
    checkpoints and stops) and the sweep waits for it instead of killing it mid-checkpoint.
    Returns (exit code, whether the sweep itself was signalled)."""
    signalled, procs = [], []

    def forward(signum, frame):
        signalled.append(signum)
        if procs and procs[0].poll() is None:
            procs[0].send_signal(signum)  # idempotent for the trainer: a second SIGINT changes nothing

    # handlers first: a signal arriving while the run starts must not kill the sweep (a busy machine
    # let the run start, and be signalled, before the handlers of a sweep that installed them after)
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        procs.append(subprocess.Popen(argv))
        proc = procs[0]
        if signalled:  # arrived before the run existed: pass the last one on now
            proc.send_signal(signalled[-1])
        rc = proc.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return rc, bool(signalled)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="run config YAML shared by every run")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated residual modes")
    parser.add_argument("--seeds", type=int, default=3,
                        help="replicates per mode: train.seed = 0..N-1 (+ --seed-offset), each its own init and data "
                             "order; >= 3 for a usable confidence interval")
    parser.add_argument("--seed-offset", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="sweep folder (default runs/sweep_<config stem>)")
    parser.add_argument("--launcher", default=None,
                        help='command prefix, e.g. "accelerate launch --config_file X" (default: this python)')
    parser.add_argument("--print-only", action="store_true", help="print the commands instead of running them")
    parser.add_argument("--keep-going", action="store_true", help="continue with the next run when one fails")
    parser.add_argument("--no-compare", action="store_true")
    parser.add_argument("--probe", action="store_true", help="pass --probe to evals.compare (offline probe of hf/)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides for every run, e.g. train.max_steps=200")
    args = parser.parse_args(argv)
    modes = parse_modes(args.modes)
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    seeds = list(range(args.seed_offset, args.seed_offset + args.seeds))
    out = args.out or Path("runs") / f"sweep_{Path(args.config).stem}"
    cmds = build_commands(args.config, modes, seeds, out, args.overrides, args.launcher)
    compare_cmd = [sys.executable, str(REPO / "evals" / "compare.py"), *[str(d) for d, _ in cmds],
                   "--out", str(out / "report")]
    compare_cmd += ["--probe"] if args.probe else []

    check_config(args.config, args.overrides, tuple(modes))
    if args.print_only:
        for _, argv_ in cmds:
            print(shlex.join(argv_))
        print(shlex.join(compare_cmd))
        return 0

    failed = []
    for i, (run_dir, argv_) in enumerate(cmds, 1):
        print(f"[sweep] {i}/{len(cmds)} {run_dir.name}: {shlex.join(argv_)}", flush=True)
        t0 = time.time()
        rc, signalled = run_one(argv_)
        print(f"[sweep] {run_dir.name}: exit {rc} after {time.time() - t0:.0f} s", flush=True)
        if signalled or rc == EXIT_INTERRUPTED:
            print(f"[sweep] interrupted during {run_dir.name}: no further runs and no comparison; rerun the same "
                  "sweep command to resume it", file=sys.stderr)
            return EXIT_INTERRUPTED
        if rc != 0:
            failed.append((run_dir, rc))
            if rc == 2 or not args.keep_going:  # 2 = config error: every other run would fail the same way
                print(f"[sweep] stopping: {run_dir} failed (exit {rc}); rerun resumes finished/interrupted runs",
                      file=sys.stderr)
                return 1
    if not args.no_compare:
        done = [str(d) for d, _ in cmds if (d / "metrics.jsonl").is_file()]
        if done:
            rc = subprocess.call(compare_cmd[:2] + done + compare_cmd[2 + len(cmds):])
            if rc != 0:
                return rc
    if failed:
        print("[sweep] failed runs: " + ", ".join(f"{d} (exit {rc})" for d, rc in failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
