"""A retrained adapter in the same folder, local or on S3, gets a new cache identity."""

from __future__ import annotations

import os
import time

import s3fs

from factory.config import S3Config
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
    assert adapter_fingerprint("someone/hub-adapter") == "someone/hub-adapter"


def test_s3_adapter_is_fingerprinted_by_its_listing(s3_bucket):
    endpoint, bucket = s3_bucket
    s3 = S3Config(endpoint_url=endpoint)
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True, use_listings_cache=False)
    url = f"s3://{bucket}/student/adapter"
    fs.pipe({f"{bucket}/student/adapter/adapter_config.json": b"{}",
             f"{bucket}/student/adapter/adapter_model.safetensors": b"weights-1"})
    first = adapter_fingerprint(url, s3)
    assert first not in (None, url) and first == adapter_fingerprint(url, s3)
    # Retrained into the same path: same names, new weights.
    fs.pipe(f"{bucket}/student/adapter/adapter_model.safetensors", b"weights-2")
    assert adapter_fingerprint(url, s3) != first
