"""Writing the GGUF files the tests build, with the `gguf` package's writer as llama.cpp's scripts do."""

from __future__ import annotations

from pathlib import Path


def finish(writer, path: Path) -> Path:
    """Write what `writer` (a `gguf.GGUFWriter` for `path`) holds, header, metadata and tensors, and close it."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
