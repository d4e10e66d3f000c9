"""What a busy machine does to a CPU training step, and what OMP_WAIT_POLICY=PASSIVE does about it.

    python examples/busy_machine.py                        # 2 torch threads; idle and with N busy processes
    python examples/busy_machine.py --cores 0 1 --busy 4   # pinned to two cores, four busy processes on them

The UNet's share of a toy training step (the tiny UNet, a batch of 32 8×8×4 latents, a 64-wide
condition; forward, backward, AdamW) runs in a fresh Python process per wait policy, since OpenMP
reads its settings when it starts. After a warm-up step, that process times ``--steps`` steps (or as
many as fit in ``--max_s`` seconds) with no background load, then with ``--busy`` Python processes
spinning in a loop, recording the wall clock and its own CPU time (all its threads) per step. Each
round runs one such process per policy; the next round reverses the order of the policies and of the
two loads, so a drift in the machine's other load falls on every configuration alike. It prints the
1-minute load average before each round, then a table: wait policy | background | steps | wall s/step |
CPU s/step, as median [min–max] over every step of every round.

Why: libgomp's threads busy-wait (spin) at each parallel region's barrier before they sleep. With other
processes on the cores, the thread being waited for is often descheduled, so its partner burns its own
time slice spinning, and every one of the UNet's hundreds of small ops pays that at its barrier.
``OMP_WAIT_POLICY=PASSIVE`` makes waiting threads sleep at once (the Makefile exports it).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# OpenMP settings by name: libgomp's default (spin ~300 000 times, then sleep), sleeping at once, a short spin.
POLICIES = {
    "default": {}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "spin10k": {"GOMP_SPINCOUNT": "10000"}, "spin1k": {"GOMP_SPINCOUNT": "1000"},
}
NAMES = {
    "default": "unset (libgomp spins)", "passive": "PASSIVE",
    "spin10k": "unset, GOMP_SPINCOUNT=10000", "spin1k": "unset, GOMP_SPINCOUNT=1000",
}
SPIN = "while True: pass"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="torch threads of the training step (train.py's default on two cores).")
    p.add_argument("--busy", type=int, help="Busy background processes (default: as many as the cores the step may use).")
    p.add_argument("--cores", type=int, nargs="+", help="Pin the step and the busy processes to these CPUs (default: no pinning).")
    p.add_argument("--policies", nargs="+", default=["default", "passive"], choices=list(POLICIES), help="OpenMP wait settings to compare (see POLICIES).")
    p.add_argument("--rounds", type=int, default=2, help="Rounds over every configuration, each in the reverse order of the one before.")
    p.add_argument("--steps", type=int, default=4, help="Timed steps per measurement (fewer if --max_s runs out).")
    p.add_argument("--max_s", type=float, default=3.0, help="Stop timing steps after this many seconds (at least one step).")
    p.add_argument("--output", help="Also write every measured step as JSON here.")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--loads", type=int, nargs="+", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def child(args) -> None:
    """Times training steps of the tiny UNet under each of ``--loads`` (numbers of busy processes, in that order).

    Prints one JSON line: per load, the wall-clock and CPU seconds of each step.
    """
    import torch

    from vdl_diffusion.models import build_unet

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    unet = build_unet("tiny", 64, latent_channels=4, sample_size=8)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    z, t = torch.randn(32, 4, 8, 8), torch.nn.functional.normalize(torch.randn(32, 64), dim=-1)

    def step():
        s = torch.randint(0, 1000, (32,))
        prediction = unet(z, s, encoder_hidden_states=None, added_cond_kwargs={"image_embeds": t}).sample
        torch.nn.functional.mse_loss(prediction, torch.randn_like(z)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: first-call allocations
    measured = {}
    for busy in args.loads:
        # Spinners inherit this process's CPU affinity (--cores).
        spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(busy)]
        try:
            walls, cpus, start = [], [], time.perf_counter()
            while len(walls) < args.steps and (not walls or time.perf_counter() - start < args.max_s):
                wall, cpu = time.perf_counter(), time.process_time()
                step()
                walls.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu)
        finally:
            for spinner in spinners:
                spinner.kill()
                spinner.wait()
        measured[busy] = {"wall": walls, "cpu": cpus}
    print(json.dumps(measured))


def measure(args, policy: str, loads: list[int]) -> dict[int, dict]:
    """One child process with ``policy``'s OpenMP settings, timing steps under each of ``loads`` in turn."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(POLICIES[policy], PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    command = [sys.executable, __file__, "--child", "--threads", str(args.threads), "--steps", str(args.steps),
               "--max_s", str(args.max_s), "--loads", *map(str, loads)]  # fmt: skip
    pin = (lambda: os.sched_setaffinity(0, args.cores)) if args.cores else None
    result = subprocess.run(command, env=env, capture_output=True, text=True, preexec_fn=pin, check=True)
    return {int(busy): steps for busy, steps in json.loads(result.stdout.strip().splitlines()[-1]).items()}


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}–{max(values):.3f}]"


def main(args) -> None:
    cores = len(args.cores) if args.cores else len(os.sched_getaffinity(0))
    busy = cores if args.busy is None else args.busy
    steps = {(policy, n): {"wall": [], "cpu": []} for n in (0, busy) for policy in args.policies}
    pinning = f" (pinned: {' '.join(map(str, args.cores))})" if args.cores else ""
    print(f"{args.threads} torch threads on {cores} cores{pinning}; loaded: {busy} busy processes; {args.rounds} rounds.", flush=True)
    for round_index in range(args.rounds):
        print(f"round {round_index + 1}: load average (1 min) {os.getloadavg()[0]:.2f}", flush=True)
        forward = round_index % 2 == 0
        for policy in args.policies if forward else args.policies[::-1]:
            for n, measured in measure(args, policy, [0, busy] if forward else [busy, 0]).items():
                for key in ("wall", "cpu"):
                    steps[policy, n][key] += measured[key]
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f}\n")
    print("| OMP_WAIT_POLICY | background | steps | wall s/step, median [min–max] | CPU s/step, median [min–max] |")
    print("|---|---|---|---|---|")
    for (policy, n), measured in steps.items():
        print(f"| {NAMES[policy]} | {n} busy processes | {len(measured['wall'])} | {summary(measured['wall'])} | {summary(measured['cpu'])} |")
    if args.output:
        rows = [{"policy": policy, "busy": n, **measured} for (policy, n), measured in steps.items()]
        with open(args.output, "w") as file:
            json.dump({"threads": args.threads, "cores": cores, "rows": rows}, file, indent=1)


if __name__ == "__main__":
    arguments = parse_args()
    child(arguments) if arguments.child else main(arguments)
