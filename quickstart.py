#!/usr/bin/env python3
"""Set up and run WattLedger with nothing but Python 3.11+.

    python3 quickstart.py demo    install into .venv, then run everything with five emulated devices
    python3 quickstart.py test    install into .venv, then type-check and run the test suite
    python3 quickstart.py bench   install into .venv, then run the benchmarks

Extra arguments go to the command run (`demo -- --port 8080`, `test -- -k relay`).
The install step runs again only when pyproject.toml changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".installed"


def install() -> None:
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted and PYTHON.exists():
        return
    if not PYTHON.exists():
        print(f"creating {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
    print("installing WattLedger and its test tools (once)", flush=True)
    pip = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}[test]"], check=True)
    STAMP.write_text(wanted)


def run(*command: str) -> int:
    """Run a command to its end; Ctrl-C reaches it directly, and it shuts down on its own."""
    with subprocess.Popen(command, cwd=ROOT) as process:
        while True:
            try:
                return process.wait()
            except KeyboardInterrupt:
                continue


def main(argv: list[str]) -> int:
    if sys.version_info < (3, 11):
        print("WattLedger needs Python 3.11 or newer", file=sys.stderr)
        return 2
    if not argv or argv[0] not in {"demo", "test", "bench"}:
        print(__doc__, file=sys.stderr)
        return 2
    command, extra = argv[0], [a for a in argv[1:] if a != "--"]
    install()
    if command == "demo":
        return run(str(BIN / "wattledger"), "serve", "--demo", "--polling-interval", "5", *extra)
    if command == "test":
        return run(str(PYTHON), "-m", "mypy") or run(str(PYTHON), "-m", "pytest", *extra)
    for script in ("bench_poll_store.py", "bench_poll_fanout.py", "bench_projection.py", "bench_relay.py"):
        if code := run(str(PYTHON), str(ROOT / "bench" / script), *extra):
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
