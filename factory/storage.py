"""Local and s3:// paths behind one fsspec interface (s3fs for S3-compatible stores)."""

from __future__ import annotations

import os
import posixpath
import uuid
from typing import Any

import fsspec
import pyarrow.fs as pafs

from factory.config import S3Config
from factory.errors import UserError


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def join(base: str, *parts: str) -> str:
    if is_remote(base):
        return posixpath.join(base.rstrip("/"), *parts)
    return os.path.join(base, *parts)


def filesystem(path: str, s3: S3Config | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for `path` and the path as that filesystem names it."""
    if path.startswith("s3://"):
        opts: dict[str, Any] = (s3 or S3Config()).storage_options()
        # Listings must see what this process (or another worker) just wrote.
        fs = fsspec.filesystem("s3", skip_instance_cache=True, use_listings_cache=False, **opts)
        return fs, path[len("s3://"):].rstrip("/")
    if is_remote(path):
        protocol = path.split("://", 1)[0]
        try:
            fs = fsspec.filesystem(protocol)
        except (ImportError, ValueError) as exc:
            raise UserError(f"{path}: unsupported storage protocol '{protocol}': {exc}") from None
        return fs, path.split("://", 1)[1]
    local = path[len("file://"):] if path.startswith("file://") else path
    return fsspec.filesystem("file"), os.path.abspath(local)


def is_local_fs(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "file" in protocols


def arrow_filesystem(fs: fsspec.AbstractFileSystem) -> pafs.FileSystem:
    """A pyarrow filesystem over `fs`, for Ray Data readers and writers."""
    if is_local_fs(fs):
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def describe_error(path: str, exc: BaseException) -> str:
    """A one-line reason for a storage failure, naming what the user should check."""
    text = f"{type(exc).__name__}: {exc}"
    low = text.lower()
    if "nosuchbucket" in low or "bucket does not exist" in low or "specified bucket does not exist" in low:
        return f"{path}: bucket does not exist"
    if "credentials" in low or "invalidaccesskeyid" in low or "signaturedoesnotmatch" in low or "accessdenied" in low:
        return f"{path}: no valid S3 credentials (set s3.key/s3.secret or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"
    if "could not connect" in low or "connect" in low and "endpoint" in low:
        return f"{path}: cannot reach the S3 endpoint ({exc})"
    return f"{path}: {text}"


def check_readable(path: str, s3: S3Config | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, fpath = filesystem(path, s3)
    try:
        exists = fs.exists(fpath)
    except Exception as exc:  # s3fs raises a zoo of botocore errors; translate them to one line
        raise UserError(describe_error(path, exc)) from None
    if not exists:
        if path.startswith("s3://"):
            bucket = fpath.split("/", 1)[0]
            try:
                bucket_ok = fs.exists(bucket)
            except Exception as exc:
                raise UserError(describe_error(path, exc)) from None
            if not bucket_ok:
                raise UserError(f"{path}: bucket '{bucket}' does not exist")
        raise UserError(f"{path}: no such file or folder")
    return fs, fpath


def check_writable(path: str, s3: S3Config | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Fail now, with one line, where `path` could not be written. Creates nothing: a local folder
    appears with the first file written into it, so a job that fails first leaves none behind."""
    fs, fpath = filesystem(path, s3)
    try:
        if path.startswith("s3://"):
            bucket = fpath.split("/", 1)[0]
            if not fs.exists(bucket):
                raise UserError(f"{path}: bucket '{bucket}' does not exist")
        elif is_local_fs(fs):
            _check_local_folder(path, fpath)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(describe_error(path, exc)) from None
    return fs, fpath


def _check_local_folder(path: str, fpath: str) -> None:
    existing = fpath
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"{path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{path}: no permission to write in {existing}")


def write_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Readers see the old file or the new one, never half: one PUT on an object store,
    write-then-rename locally (the parent folder is created with the file)."""
    if not is_local_fs(fs):
        fs.pipe_file(path, data)
        return
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    fs.pipe_file(tmp, data)
    fs.mv(tmp, path)


def remove_empty_folders(path: str, s3: S3Config | None = None, keep_root: bool = False) -> None:
    """Remove the folders under `path` (and `path` itself unless `keep_root`) that hold no file.
    Local only: object stores have no empty folders."""
    fs, fpath = filesystem(path, s3)
    if not is_local_fs(fs) or not os.path.isdir(fpath):
        return
    for folder, _, _ in sorted(os.walk(fpath), key=lambda w: -w[0].count(os.sep)):
        if keep_root and folder == fpath:
            continue
        try:
            os.rmdir(folder)  # only an empty folder goes
        except OSError:
            pass
