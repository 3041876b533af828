"""Run a native kernel's tests through one build of its C source (compiler flags per path)."""

from __future__ import annotations

from types import ModuleType

import pytest


def use_build(module: ModuleType, paths: dict[str, tuple[str, ...]],
              request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Build ``module``'s library with the flags of path ``request.param`` and make the module
    use it for this test (skipped, with the compiler's reason, when that build fails)."""
    lib, why = module.load_library(paths[request.param])
    if lib is None:
        pytest.skip(f"{request.param} build failed: {why}")
    monkeypatch.setattr(module, "_lib", lib)
    return request.param
