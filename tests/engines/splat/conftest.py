"""Splat tests run torch single-threaded: on a shared 2-core box, OpenMP threads spinning
against other processes made small renders 10-40x slower (measured), and these tests
render many tiny images. Module-scoped so other packages' tests get their threads back."""
from __future__ import annotations

from typing import Iterator

import pytest


@pytest.fixture(autouse=True, scope="module")
def _single_thread_torch() -> Iterator[None]:
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
