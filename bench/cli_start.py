"""How fast the CLI answers: wall and CPU time of `gateway --version`, `--help`, `config check` and
`portfolio list`, each run many times (as hyperfine does), against `python -c pass` as the baseline.

Every command runs as its own process from the console script, as an admin types it; the CPU figure is
the child's user plus system time (os.wait4), which a busy shared machine disturbs less than the wall
time. `config check` and `portfolio list` run against a configuration in a temporary directory with a
migrated SQLite database and the seed's directory (config/example/directory.yaml) loaded.

With ``--baseline DIR`` (another checkout, say of main: ``git worktree add /tmp/base main``) every
gateway command also runs from that checkout's code, with this virtualenv's interpreter and packages
(``python -P -m gateway`` with ``PYTHONPATH=DIR``, which is what the console script does), taking turns run
by run with this tree's; the last column is this tree's CPU as a fraction of the baseline's.

    .venv/bin/python bench/cli_start.py                 # 20 runs of each after 3 warm-up runs
    .venv/bin/python bench/cli_start.py --runs 50
    .venv/bin/python bench/cli_start.py --baseline /tmp/base
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Timing:
    name: str
    wall: list[float]
    cpu: list[float]


def _once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) of one run; a failing command stops the benchmark."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        assert process.stderr is not None
        sys.exit(f"{' '.join(argv)} exited {process.returncode}: {process.stderr.read().decode()}")
    if process.stderr is not None:
        process.stderr.close()
    return wall, usage.ru_utime + usage.ru_stime


def measure(
    name: str, variants: list[tuple[list[str], dict[str, str]]], runs: int, warmup: int
) -> list[Timing]:
    """One Timing per (argv, env) variant of the command; the variants take turns run by run, so a
    change in the machine's load falls on all of them alike."""
    for _ in range(warmup):
        for argv, env in variants:
            _once(argv, env)
    walls: list[list[float]] = [[] for _ in variants]
    cpus: list[list[float]] = [[] for _ in variants]
    for _ in range(runs):
        for n, (argv, env) in enumerate(variants):
            wall, cpu = _once(argv, env)
            walls[n].append(wall)
            cpus[n].append(cpu)
    return [Timing(name, w, c) for w, c in zip(walls, cpus, strict=True)]


def _prepared(folder: Path, env: dict[str, str]) -> Path:
    """A configuration with a migrated SQLite database holding the seed's directory."""
    config = folder / "gateway.toml"
    config.write_text(
        f'[gateway]\ndata_dir = "{folder / "data"}"\n\n'
        f'[database]\nurl = "sqlite+aiosqlite:///{folder / "gateway.db"}"\n',
        encoding="utf-8",
    )
    gateway = str(BIN / "gateway")
    for args in (["db", "upgrade"], ["directory", "load", str(ROOT / "config/example/directory.yaml")]):
        subprocess.run([gateway, "--config", str(config), *args], check=True, env=env, capture_output=True)
    return config


def _row(t: Timing, base: Timing, before: Timing | None = None) -> str:
    wall, cpu = statistics.mean(t.wall), statistics.mean(t.cpu)
    sd = statistics.stdev(t.wall) if len(t.wall) > 1 else 0.0
    row = (
        f"{t.name:<34} {wall * 1000:8.1f} ± {sd * 1000:5.1f} {min(t.wall) * 1000:8.1f} "
        f"{cpu * 1000:8.1f} {cpu / statistics.mean(base.cpu):7.1f}x"
    )
    if before is not None:
        row += f" {cpu / statistics.mean(before.cpu):9.2f}"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20, help="measured runs of each command")
    parser.add_argument("--warmup", type=int, default=3, help="runs before measuring (disk cache)")
    parser.add_argument(
        "--baseline", type=Path, help="a checkout to compare with (its gateway/ runs with this virtualenv)"
    )
    args = parser.parse_args()
    if args.baseline is not None and not (args.baseline / "gateway" / "cli").is_dir():
        sys.exit(f"--baseline {args.baseline}: no gateway/cli there; give the root of a checkout")
    print(f"$ {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"cpus {os.cpu_count()}, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    gateway = str(BIN / "gateway")
    rows: list[tuple[Timing, Timing | None]] = []
    with tempfile.TemporaryDirectory(prefix="cli-start-") as tmp:
        config = _prepared(Path(tmp), env)
        commands = {
            "gateway --version": ["--version"],
            "gateway --help": ["--help"],
            "gateway config check": ["--config", str(config), "config", "check"],
            "gateway portfolio list": ["--config", str(config), "portfolio", "list"],
        }
        [interpreter] = measure(
            "python -c pass (baseline)", [([sys.executable, "-c", "pass"], env)], args.runs, args.warmup
        )
        rows.append((interpreter, None))
        for name, tail in commands.items():
            variants = [([gateway, *tail], env)]
            if args.baseline is not None:
                before_env = env | {"PYTHONPATH": str(args.baseline.resolve())}
                # -P: the working directory (this checkout) must not come before PYTHONPATH.
                variants.append(([sys.executable, "-P", "-m", "gateway", *tail], before_env))
            timings = measure(name, variants, args.runs, args.warmup)
            rows.append((timings[0], timings[1] if len(timings) > 1 else None))
    print(f"\n{args.runs} runs each after {args.warmup} warm-up runs; times in ms")
    print("wall: mean ± standard deviation, and the fastest run; cpu: mean user+system of the process;")
    print("x: cpu as a multiple of the baseline's (the interpreter's own start)")
    header = f"{'command':<34} {'wall':>8}   {'sd':>5} {'min':>8} {'cpu':>8} {'x':>8}"
    if args.baseline is not None:
        print(f"before: the same command from {args.baseline} (rows marked so); cpu/before: this tree's")
        print("cpu as a fraction of that")
        header += f" {'cpu/before':>9}"
    print(f"\n{header}")
    for timing, before in rows:
        print(_row(timing, interpreter, before))
        if before is not None:
            print(_row(Timing(f"  before: {timing.name}", before.wall, before.cpu), interpreter))


if __name__ == "__main__":
    main()
