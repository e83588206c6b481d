#!/usr/bin/env python3
"""Set up and run WattLedger with nothing but Python 3.11+.

    python3 quickstart.py demo    install into .venv, then run everything with five emulated devices
    python3 quickstart.py test    install into .venv, then type-check and run the test suite
    python3 quickstart.py bench   install into .venv, then run the benchmarks
    python3 quickstart.py lock    pin every dependency of pyproject.toml, with hashes, in requirements.lock

Extra arguments go to the command run (`demo -- --port 8080`, `test -- -k relay`,
`lock -- --upgrade` to move every pin to the newest release pyproject.toml admits).
The install takes exactly the versions and files in requirements.lock, and runs again
only when requirements.lock or pyproject.toml changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PYPROJECT = ROOT / "pyproject.toml"
LOCK = ROOT / "requirements.lock"
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".installed"
LOCKER = "uv==0.13.9"


def install() -> None:
    digest = hashlib.sha256()
    for source in (PYPROJECT, LOCK):
        digest.update(hashlib.sha256(source.read_bytes()).digest())
    wanted = digest.hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted and PYTHON.exists():
        return
    if not PYTHON.exists():
        print(f"creating {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
    print(f"installing WattLedger and its test tools from {LOCK.name} (once)", flush=True)
    pip = [str(PYTHON), "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "install", "--quiet", "--require-hashes", "-r", str(LOCK)], check=True)
    # Editable installs carry no hash: build this checkout with the locked setuptools, fetching nothing.
    editable = ["--no-deps", "--no-build-isolation", "--no-index", "-e", str(ROOT)]
    subprocess.run([*pip, "install", "--quiet", *editable], check=True)
    check = subprocess.run([*pip, "check"], capture_output=True, text=True, check=False)
    if check.returncode:
        print(check.stdout, end="", file=sys.stderr)
        sys.exit(f"{LOCK.name} does not satisfy pyproject.toml: run `python3 quickstart.py lock`")
    STAMP.write_text(wanted)


def lock(extra: list[str]) -> int:
    """Resolve pyproject.toml (with the test extra and the build requirements) for every platform."""
    import tomllib  # here, so that Python 3.10 still gets the version message from main()

    build = "\n".join(tomllib.loads(PYPROJECT.read_text())["build-system"]["requires"])
    with tempfile.TemporaryDirectory() as scratch:
        tools = Path(scratch)
        venv.create(tools, with_pip=True)
        python = tools / BIN.name / PYTHON.name
        pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
        subprocess.run([*pip, "install", "--quiet", LOCKER], check=True)
        compile_ = [str(python), "-m", "uv", "pip", "compile", "--quiet", "pyproject.toml", "-"]
        options = ["--extra", "test", "--universal", "--python-version", "3.11", "--generate-hashes"]
        header = ["--custom-compile-command", "python3 quickstart.py lock", "--output-file", LOCK.name]
        return subprocess.run([*compile_, *options, *header, *extra], cwd=ROOT, input=build, text=True).returncode


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
    if not argv or argv[0] not in {"demo", "test", "bench", "lock"}:
        print(__doc__, file=sys.stderr)
        return 2
    command, extra = argv[0], [a for a in argv[1:] if a != "--"]
    if command == "lock":
        return lock(extra)
    install()
    if command == "demo":
        return run(str(BIN / "wattledger"), "serve", "--demo", "--polling-interval", "5", *extra)
    if command == "test":
        # Two workers, a test file each at a time: most tests wait on the database, the broker or a device.
        chosen = any(a.startswith(("-n", "--numprocesses")) or a == "no:xdist" for a in extra)
        workers = [] if chosen else ["-n", "2", "--dist", "loadfile"]
        return run(str(PYTHON), "-m", "mypy") or run(str(PYTHON), "-m", "pytest", *workers, *extra)
    for script in ("bench_poll_store.py", "bench_poll_fanout.py", "bench_projection.py", "bench_relay.py"):
        if code := run(str(PYTHON), str(ROOT / "bench" / script), *extra):
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
