"""One exception base per package: every exception adapters/, projections/ and infra/ define derives from it."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

from adapters.errors import AdapterError
from infra.errors import InfraError
from projections.errors import ProjectionError

BASES: dict[str, type[Exception]] = {"adapters": AdapterError, "projections": ProjectionError, "infra": InfraError}


def exceptions_of(package: str) -> dict[str, type[BaseException]]:
    root = importlib.import_module(package)
    names = [package, *(info.name for info in pkgutil.walk_packages(root.__path__, f"{package}."))]
    found: dict[str, type[BaseException]] = {}
    for name in names:
        for attribute, value in vars(importlib.import_module(name)).items():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == name:
                found[f"{name}.{attribute}"] = value
    return found


@pytest.mark.parametrize("package", sorted(BASES))
def test_every_exception_of_a_package_derives_from_its_base(package: str) -> None:
    strays = [name for name, kind in sorted(exceptions_of(package).items()) if not issubclass(kind, BASES[package])]
    assert strays == []
