"""The allocator setting the numpy engine makes: applied on glibc, and nothing elsewhere."""
import platform
import sys

from microgpt import allocator


def test_freed_memory_is_kept_on_glibc_and_nothing_happens_elsewhere(monkeypatch):
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert allocator.keep_freed_memory() == glibc  # mallopt took both values
    monkeypatch.setattr(sys, "platform", "darwin")
    assert allocator.keep_freed_memory() is False
