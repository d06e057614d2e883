"""The allocator setting training runs with (common/allocator.py)."""

from __future__ import annotations

import sys

import pytest

from common.allocator import keep_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_is_applied_on_glibc_and_idempotent():
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True
