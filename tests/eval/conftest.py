"""Fixtures for the measurement tests: a tiny random Llama, a character tokenizer, toy models."""

from __future__ import annotations

import copy

import pytest
import torch
from evaltoys import CharTokenizer, make_tiny_llama


@pytest.fixture(scope="session")
def tiny_llama() -> torch.nn.Module:
    return make_tiny_llama()


@pytest.fixture(scope="session")
def perturbed_llama(tiny_llama) -> torch.nn.Module:
    """A copy of ``tiny_llama`` with Gaussian noise (5% of each tensor's std) on every weight."""
    model = copy.deepcopy(tiny_llama)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05 * p.std())
    return model


@pytest.fixture
def tokenizer() -> CharTokenizer:
    return CharTokenizer()


@pytest.fixture
def text() -> str:
    return (
        "It was the best of times, it was the worst of times, it was the age of wisdom, "
        "it was the age of foolishness, it was the epoch of belief, it was the epoch of "
        "incredulity, it was the season of Light, it was the season of Darkness."
    )
