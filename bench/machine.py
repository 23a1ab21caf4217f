"""The machine a benchmark ran on: its speed factor against the project's reference machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MACHINE_SPEED = os.path.join(ROOT, "..", "shared", "tools", "machine_speed.py")


def speed_factor() -> dict:
    """machine_speed.py's JSON (speed_factor: reference seconds = wall seconds x factor), run in a fresh process
    next to the measurement; {"unavailable": why} where the tool is not beside the checkout."""
    if not os.path.isfile(MACHINE_SPEED):
        return {"unavailable": f"{MACHINE_SPEED} not found"}
    result = subprocess.run([sys.executable, MACHINE_SPEED, "--json"], capture_output=True, text=True)
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        return {"unavailable": f"machine_speed.py printed no JSON ({(result.stderr or result.stdout)[-200:]})"}


def main(argv=None) -> dict:
    import argparse

    argparse.ArgumentParser(description="Print this machine's speed factor as the benches record it (JSON; "
                                        "reference seconds = wall seconds x speed_factor).").parse_args(argv)
    factor = speed_factor()
    print(json.dumps(factor, indent=1))
    return factor


if __name__ == "__main__":
    main()
