"""Resume for long evaluations: each finished block of results is stored under a directory, keyed by everything
the result depends on (inputs, weights, settings), and read back on a re-run instead of recomputed.

Blocks are dicts of tensors saved as safetensors (written to a temporary name, then renamed: whole or absent);
small JSON documents (e.g. sanity checks) go beside them. Nothing is unpickled."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn


def fingerprint(*parts: Any) -> str:
    """A short hex digest of tensors (shape, dtype, bytes), modules (their state dicts) and JSON-able values."""
    h = hashlib.sha256()

    def feed(obj: Any) -> None:
        if isinstance(obj, nn.Module):
            for k, v in obj.state_dict().items():
                h.update(k.encode())
                feed(v)
        elif isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            h.update(f"{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(obj, (list, tuple)):
            for o in obj:
                feed(o)
        else:
            h.update(json.dumps(obj, sort_keys=True, default=str).encode())

    for p in parts:
        feed(p)
    return h.hexdigest()[:16]


class BlockCache:
    """``BlockCache(root, key)``: blocks under ``root/key/``; ``root`` None disables it (get → None, put → no-op)."""

    def __init__(self, root: str | Path | None, key: str) -> None:
        self.dir = None if root is None else Path(root) / key

    def get(self, name: str) -> dict[str, torch.Tensor] | None:
        """The stored block ``name``, or None."""
        if self.dir is None or not (self.dir / f"{name}.safetensors").is_file():
            return None
        from safetensors.torch import load_file

        return load_file(str(self.dir / f"{name}.safetensors"))

    def put(self, name: str, block: dict[str, torch.Tensor]) -> None:
        if self.dir is None:
            return
        from safetensors.torch import save_file

        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f"{name}.tmp"
        save_file({k: v.detach().cpu().contiguous() for k, v in block.items()}, str(tmp))
        tmp.replace(self.dir / f"{name}.safetensors")

    def get_json(self, name: str) -> Any:
        path = None if self.dir is None else self.dir / f"{name}.json"
        return json.loads(path.read_text()) if path is not None and path.is_file() else None

    def put_json(self, name: str, doc: Any) -> None:
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f"{name}.json.tmp"
        tmp.write_text(json.dumps(doc))
        tmp.replace(self.dir / f"{name}.json")
