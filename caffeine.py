"""Keep the machine awake during long training runs.

    python caffeine.py [interval]      (interval: seconds between checks, default 60)

Uses the operating system's own sleep inhibitor where there is one: `systemd-inhibit` on Linux,
`caffeinate` on macOS, SetThreadExecutionState on Windows. Only where none works and a display and the
`pyautogui` package exist does it fall back to pressing Shift every interval. On a headless machine
without an inhibitor it says so and exits: nothing is pretended. Ctrl+C exits cleanly.
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import sys
import time

USAGE = "usage: python caffeine.py [interval]   (interval: seconds between checks, a number > 0; default 60)"


def parse_interval(argv: list) -> float:
    """The optional interval argument; ValueError with the usage text on anything else (SystemExit 0 after the
    usage for -h or --help)."""
    if argv and argv[0] in ("-h", "--help"):
        print(f"{USAGE}\n\n{(__doc__ or '').strip()}")
        raise SystemExit(0)
    if len(argv) > 1:
        raise ValueError(USAGE)
    if not argv:
        return 60.0
    try:
        interval = float(argv[0])
    except ValueError:
        raise ValueError(f"invalid interval {argv[0]!r}\n{USAGE}") from None
    if not interval > 0 or interval == float("inf"):
        raise ValueError(f"invalid interval {argv[0]!r}\n{USAGE}")
    return interval


def has_display(platform: str, environ: dict) -> bool:
    if platform in ("win32", "darwin"):
        return True
    return bool(environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"))


def choose_method(platform: str, which, environ: dict, can_import) -> str:
    """Pick the first available way to keep the machine awake, in order of preference:
    'windows' (SetThreadExecutionState), 'caffeinate', 'systemd-inhibit', 'keypress', or 'none'."""
    if platform == "win32":
        return "windows"
    if platform == "darwin" and which("caffeinate"):
        return "caffeinate"
    if platform.startswith("linux") and which("systemd-inhibit"):
        return "systemd-inhibit"
    if has_display(platform, environ) and can_import("pyautogui"):
        return "keypress"
    return "none"


def _can_import(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _start_inhibitor(method: str):
    """Start an inhibitor subprocess that holds the lock while it lives; None if it failed at once."""
    if method == "caffeinate":
        command = ["caffeinate", "-dimsu"]
    else:
        command = ["systemd-inhibit", "--what=idle:sleep", "--who=caffeine.py",
                   "--why=NeRF training in progress", "--mode=block", "sleep", "infinity"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)
    if process.poll() is not None:
        error = process.stderr.read().decode(errors="replace").strip().splitlines()
        print(f"{command[0]} failed: {error[-1] if error else 'exit code ' + str(process.returncode)}")
        return None
    return process


def _windows_keep_awake() -> None:
    import ctypes

    es_continuous, es_system_required, es_display_required = 0x80000000, 0x00000001, 0x00000002
    ctypes.windll.kernel32.SetThreadExecutionState(es_continuous | es_system_required | es_display_required)


def _stamp() -> str:
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        interval = parse_interval(argv)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2

    method = choose_method(sys.platform, shutil.which, dict(os.environ), _can_import)
    process = None
    if method in ("caffeinate", "systemd-inhibit"):
        process = _start_inhibitor(method)
        if process is None:
            method = "keypress" if has_display(sys.platform, os.environ) and _can_import("pyautogui") else "none"
    if method == "none":
        print("No working sleep inhibitor (systemd-inhibit, caffeinate) and no display for a "
              "simulated key press: caffeine.py is NOT keeping this machine awake. On a headless server, "
              "sleep is usually disabled already; otherwise install systemd or disable suspend.")
        return 1

    descriptions = {
        "windows": "asking Windows to stay awake (SetThreadExecutionState)",
        "caffeinate": "holding a macOS caffeinate assertion",
        "systemd-inhibit": "holding a systemd-inhibit sleep/idle lock",
        "keypress": f"pressing Shift every {interval:g} s (no OS inhibitor found)",
    }
    started = _stamp()
    print(f"caffeine.py started at {started}: {descriptions[method]}. Press Ctrl+C to stop.")
    try:
        while True:
            if method == "windows":
                _windows_keep_awake()
            elif method == "keypress":
                import pyautogui

                pyautogui.press("shift")
            elif process is not None and process.poll() is not None:
                print(f"{method} exited unexpectedly (code {process.returncode}); the machine may sleep again.")
                return 1
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
    finally:
        if process is not None and process.poll() is None:
            process.terminate()
            process.wait()
    print(f"\ncaffeine.py stopped. Started {started}, ended {_stamp()}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
