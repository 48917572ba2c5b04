"""Shared fixtures: every test gets its own cache folder and no mirror unless it asks for one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


TINY_TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\n"
    "All:\nResolved. resolved.\n\n"
) * 12


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RNNLM_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("RNNLM_DATA", raising=False)
    torch.set_num_threads(1)


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    """A single-file corpus of a few thousand characters."""
    path = tmp_path / "tiny.txt"
    path.write_text(TINY_TEXT, encoding="utf-8")
    return path
