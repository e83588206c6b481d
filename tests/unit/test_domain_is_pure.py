"""The domain package imports nothing that does I/O."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

BLOCKER = """
import importlib.abc, sys
BLOCKED = {"psycopg", "psycopg_pool", "nats", "kasa", "litestar", "uvicorn", "socket", "asyncio", "httpx"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"domain must not import {name}")
        return None
for name in list(sys.modules):
    if name.split(".")[0] in BLOCKED - {"socket", "asyncio"}:
        del sys.modules[name]
sys.meta_path.insert(0, Block())
import pkgutil, importlib, domain
# The command handlers may compose coroutines (asyncio) but, like the rest, open nothing.
ASYNC_ALLOWED = {"domain.handlers", "domain.identity_handlers", "domain.control_handlers", "domain.energy_handlers",
                 "domain.compliance_handlers", "domain.identity_core", "domain.session_handlers",
                 "domain.user_handlers", "domain.totp_handlers", "domain.key_handlers", "domain.authentication"}
modules = [info.name for info in pkgutil.walk_packages(domain.__path__, "domain.")]
for name in modules:
    if name not in ASYNC_ALLOWED:
        importlib.import_module(name)
BLOCKED -= {"asyncio", "socket"}
for name in ASYNC_ALLOWED:
    importlib.import_module(name)
leaked = sorted({m.split(".")[0] for m in sys.modules} & BLOCKED)
print("leaked:", leaked)
sys.exit(1 if leaked else 0)
"""


def test_domain_imports_no_io_library() -> None:
    result = subprocess.run(
        [sys.executable, "-c", BLOCKER], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "leaked: []" in result.stdout
