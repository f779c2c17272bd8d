"""How fast the CLI answers: wall and CPU time of `gateway --version`, `--help`, `config check` and
`portfolio list`, each run many times (as hyperfine does), against `python -c pass` as the baseline.

Every command runs as its own process from the console script, as an admin types it; the CPU figure is
the child's user plus system time (os.wait4), which a busy shared machine disturbs less than the wall
time. `config check` and `portfolio list` run against a configuration in a temporary directory with a
migrated SQLite database and the seed's directory (config/example/directory.yaml) loaded.

    .venv/bin/python bench/cli_start.py                 # 20 runs of each after 3 warm-up runs
    .venv/bin/python bench/cli_start.py --runs 50
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


def measure(name: str, argv: list[str], env: dict[str, str], runs: int, warmup: int) -> Timing:
    for _ in range(warmup):
        _once(argv, env)
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu = _once(argv, env)
        walls.append(wall)
        cpus.append(cpu)
    return Timing(name, walls, cpus)


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


def _row(t: Timing, base: Timing) -> str:
    wall, cpu = statistics.mean(t.wall), statistics.mean(t.cpu)
    sd = statistics.stdev(t.wall) if len(t.wall) > 1 else 0.0
    return (
        f"{t.name:<28} {wall * 1000:8.1f} ± {sd * 1000:5.1f} {min(t.wall) * 1000:8.1f} "
        f"{cpu * 1000:8.1f} {cpu / statistics.mean(base.cpu):7.1f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20, help="measured runs of each command")
    parser.add_argument("--warmup", type=int, default=3, help="runs before measuring (disk cache)")
    args = parser.parse_args()
    print(f"$ {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"cpus {os.cpu_count()}, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    gateway = str(BIN / "gateway")
    with tempfile.TemporaryDirectory(prefix="cli-start-") as tmp:
        config = _prepared(Path(tmp), env)
        commands = {
            "python -c pass (baseline)": [sys.executable, "-c", "pass"],
            "gateway --version": [gateway, "--version"],
            "gateway --help": [gateway, "--help"],
            "gateway config check": [gateway, "--config", str(config), "config", "check"],
            "gateway portfolio list": [gateway, "--config", str(config), "portfolio", "list"],
        }
        timings = [measure(name, argv, env, args.runs, args.warmup) for name, argv in commands.items()]
    print(f"\n{args.runs} runs each after {args.warmup} warm-up runs; times in ms")
    print("wall: mean ± standard deviation, and the fastest run; cpu: mean user+system of the process;")
    print("x: cpu as a multiple of the baseline's (the interpreter's own start)\n")
    print(f"{'command':<28} {'wall':>8}   {'sd':>5} {'min':>8} {'cpu':>8} {'x':>8}")
    for t in timings:
        print(_row(t, timings[0]))


if __name__ == "__main__":
    main()
