"""examples/busy_machine.py runs end to end: a step timed idle and beside a busy process, its table and JSON."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_busy_machine_times_steps_idle_and_loaded(tmp_path):
    output = tmp_path / "busy.json"
    command = [sys.executable, str(ROOT / "examples" / "busy_machine.py"), "--policies", "passive", "--rounds", "1",
               "--steps", "1", "--max_s", "0", "--busy", "1", "--output", str(output)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    assert "load average (1 min)" in result.stdout and "| PASSIVE | 1 busy processes | 1 |" in result.stdout
    rows = json.loads(output.read_text())["rows"]
    assert [(row["policy"], row["busy"]) for row in rows] == [("passive", 0), ("passive", 1)]
    assert all(len(row["wall"]) == len(row["cpu"]) == 1 and row["wall"][0] > 0 for row in rows)
