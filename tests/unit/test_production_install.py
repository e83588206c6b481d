"""A production install needs no emulator: only `emulate` and `serve --demo` import it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

WITHOUT_EMULATOR = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.startswith("adapters.emulator"):
            raise ImportError(f"{name} is not part of a production install")
        return None
sys.meta_path.insert(0, Block())
import infra.cli, infra.bootstrap, api.app, adapters.poller, adapters.relay, adapters.nats_commands
infra.cli.build_parser().parse_args(["serve"])
code = infra.cli.main(["emulate", "--devices", "HS110"])
print("emulate exit:", code)
"""


def test_every_production_entry_point_imports_without_the_emulator() -> None:
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_EMULATOR], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "emulate exit: 2" in result.stdout
    assert "source checkout" in result.stderr
