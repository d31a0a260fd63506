"""Shared fixtures: quiet output, an isolated cache, and the micro zoo built once per session."""

from __future__ import annotations

import os

import pytest
import torch

# The tests run tiny models: one thread is faster than several contending for 2 cores
# (and the results do not depend on it).
torch.set_num_threads(1)

os.environ["MOL_QUIET"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def mol_cache(tmp_path_factory) -> str:
    """A private MOL_CACHE for the whole session (never the user's real cache)."""
    path = tmp_path_factory.mktemp("mol-cache")
    previous = os.environ.get("MOL_CACHE")
    os.environ["MOL_CACHE"] = str(path)
    yield str(path)
    if previous is None:
        os.environ.pop("MOL_CACHE", None)
    else:
        os.environ["MOL_CACHE"] = previous


@pytest.fixture(scope="session")
def micro_zoo(mol_cache):
    """The micro zoo (seconds to build): real trained models, for plumbing and oracle tests."""
    from mol.zoo import build_zoo

    return build_zoo("micro")
