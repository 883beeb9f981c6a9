"""Several training runs side by side on one GPU, fitted to a wall-clock budget, then scored on validation pairs.

    python training/timed_runs.py --degraded D --clean C --val VAL --out OUT --minutes 6 \\
        --run ft=training/configs/default.yaml:default:batch_size=4,lr=1e-4 \\
        --run scratch=training/configs/default.yaml::batch_size=4

A short GPU lease (minutes, not hours) is spent best by several small runs at once: one CPU process each
keeps the GPU busy while the others launch kernels. Each ``--run NAME=CONFIG[:INIT[:KEY=VALUE,...]]`` is an
ordinary ``training/train.py`` run of the recipe ``CONFIG`` with the given fields changed (``INIT`` as its
``--init``: ``default`` or a path; empty for none). How many steps fit is not known in advance, and the
learning rate's linear decay needs the total, so:

1. **calibrate**: all runs start with a huge ``steps`` for ``--calibrate`` seconds, then get SIGINT, finish
   the step and save (the engine's own stop), which gives each run's measured steps/s;
2. **fit**: each run resumes with ``steps`` set to what its rate fills until the budget's end, with
   snapshots every ``--snapshots``-th of the remaining steps (kept, not pruned);
3. **score**: every snapshot's EMA restorer, the bundled model and the classical baselines are evaluated on
   the validation pairs (``cdd-dehaze eval``, never the held-out evaluation sets) into ``OUT/val``.

A run that fails is reported and left out; the others go on. Everything a run does is in ``OUT/NAME.log``.
"""
from __future__ import annotations

import argparse
import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def read_rate(losses_csv: Path, skip: int = 10) -> tuple[int, float]:
    """(last step, steps/s measured after the first ``skip`` steps) from a run's ``losses.csv``."""
    with open(losses_csv) as f:
        rows = [(int(r["step"]), float(r["seconds"])) for r in csv.DictReader(f)]
    if len(rows) <= skip + 1:
        raise RuntimeError(f"{losses_csv}: only {len(rows)} steps logged, too few to measure a rate")
    (s0, t0), (s1, t1) = rows[skip], rows[-1]
    return s1, (s1 - s0) / max(t1 - t0, 1e-6)


def _number_or_yaml(text: str):
    """``1e-4`` is a float here (YAML 1.1, which PyYAML reads, wants ``1.0e-4``); anything else as YAML."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return yaml.safe_load(text)


def start(name: str, recipe: dict, init: str | None, args, resume: bool) -> subprocess.Popen:
    run_dir = Path(args.out) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    config = run_dir.parent / f"{name}.yaml"
    config.write_text(yaml.safe_dump(recipe, sort_keys=False))
    command = [sys.executable, str(HERE / "train.py"), "--config", str(config), "--degraded", args.degraded,
               "--clean", args.clean, "--out", str(run_dir), "--log-every", "100"]
    if resume:
        command.append("--resume")
    elif init:
        command += ["--init", init]
    log = open(Path(args.out) / f"{name}.log", "a")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def stop_all(processes: dict[str, subprocess.Popen], grace_s: float = 120) -> None:
    for p in processes.values():
        if p.poll() is None:
            p.send_signal(signal.SIGINT)  # train.py finishes the step and saves
    deadline = time.time() + grace_s
    for p in processes.values():
        try:
            p.wait(timeout=max(deadline - time.time(), 1))
        except subprocess.TimeoutExpired:
            p.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--degraded", required=True)
    parser.add_argument("--clean", required=True)
    parser.add_argument("--val", required=True, help="paired validation folder (hazy/, clear/)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--run", action="append", required=True, metavar="NAME=CONFIG[:INIT[:KEY=VALUE,...]]")
    parser.add_argument("--minutes", type=float, required=True, help="wall time for all training, both phases")
    parser.add_argument("--calibrate", type=float, default=60, help="seconds of the calibration phase")
    parser.add_argument("--restart", type=float, default=25, help="seconds a resume takes before its first step")
    parser.add_argument("--snapshots", type=int, default=6, help="snapshots per run in the fitted phase")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--baselines", nargs="*", default=["identity", "dcp", "cap", "default"])
    args = parser.parse_args()
    began, out = time.time(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget_end = began + args.minutes * 60

    runs = {}
    for spec in args.run:
        name, _, rest = spec.partition("=")
        config, _, rest = rest.partition(":")
        init, _, changes = rest.partition(":")
        recipe = yaml.safe_load(Path(config).read_text()) or {}
        for change in filter(None, changes.split(",")):
            key, _, value = change.partition("=")
            recipe[key] = _number_or_yaml(value)
        runs[name] = (recipe | {"device": args.device, "steps": 10**7, "checkpoint_every": 10**7,
                                "keep_checkpoints": 1000}, init or None)

    # 1. calibrate
    processes = {name: start(name, recipe, init, args, resume=False) for name, (recipe, init) in runs.items()}
    calibration_end = time.time() + args.calibrate
    while time.time() < calibration_end and any(p.poll() is None for p in processes.values()):
        time.sleep(1)
    stop_all(processes)
    summary = {"began": began, "runs": {}}
    for name, (recipe, _) in runs.items():
        try:
            step, rate = read_rate(out / name / "losses.csv")
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            print(f"{name}: calibration failed ({exc}); see {out / name}.log", flush=True)
            continue
        remaining = budget_end - time.time() - args.restart
        total = step + max(int(rate * remaining * 0.97), 10)
        every = max((total - step) // args.snapshots, 1)
        summary["runs"][name] = {"calibrated_steps": step, "steps_per_s": rate, "total": total, "every": every}
        runs[name] = (recipe | {"steps": total, "checkpoint_every": every}, None)
        print(f"{name}: {rate:.2f} steps/s with all runs sharing the device; {step} → {total} steps, "
              f"snapshot every {every}", flush=True)

    # 2. fit: resume with the total the measured rate fills (train.py takes steps and cadence from the recipe)
    processes = {}
    for name in summary["runs"]:
        recipe, _ = runs[name]
        processes[name] = start(name, recipe, None, args, resume=True)
    for name, p in processes.items():
        p.wait(timeout=max(budget_end - time.time(), 0) + 300)
        summary["runs"][name]["exit"] = p.returncode
        print(f"{name}: exit {p.returncode} after {time.time() - began:.0f} s", flush=True)
    summary["training_s"] = time.time() - began

    # 3. score every snapshot and the baselines on the validation pairs
    from napari_cdd_dehaze.evaluate import evaluate

    methods = list(args.baselines)
    for name in summary["runs"]:
        methods += [str(p) for p in sorted((out / name / "checkpoints").glob("step_*"))]
    report = evaluate([args.val], [], methods, device=args.device, tile=0, log=lambda m: None)
    report.write(out / "val")
    val = report.sets[0]
    ranking = sorted(((val.means(m).get("psnr", float("nan")), m) for m in methods if val.means(m)), reverse=True)
    summary["val_psnr"] = {m: val.means(m) for m in methods if val.means(m)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(report.summary_table(), flush=True)
    print("best on validation: " + ", ".join(f"{m} {p:.2f}" for p, m in ranking[:5]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
