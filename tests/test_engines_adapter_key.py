"""A retrained adapter in the same folder gets a new cache identity."""

from __future__ import annotations

import os
import time

from factory.engines.base import adapter_fingerprint


def test_adapter_fingerprint_follows_the_files(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"v1")
    first = adapter_fingerprint(str(adapter))
    assert first == adapter_fingerprint(str(adapter))
    time.sleep(0.01)
    (adapter / "adapter_model.safetensors").write_bytes(b"version-2")
    os.utime(adapter / "adapter_model.safetensors")
    assert adapter_fingerprint(str(adapter)) != first
    assert adapter_fingerprint(None) is None
    assert adapter_fingerprint("s3://bucket/adapter") == "s3://bucket/adapter"
