"""Checkpoint files users have: a ``state_dict`` saved by ``torch.save`` (.pt/.pth, loaded with
``weights_only=True``), a ``.safetensors`` file, or a training checkpoint dict holding the
state_dict under ``state_dict``/``model``/``model_state_dict`` (a DataParallel ``module.`` prefix is
stripped). Anything else is named for what it is, before any model is built."""
from __future__ import annotations

import json
import pickle
import re
import struct
import zipfile
from pathlib import Path

import torch

from .errors import WeightsError

SAVE_FIX = "re-save it as a plain state_dict: torch.save(model.state_dict(), 'model.pth')"
NESTED_KEYS = ("state_dict", "model", "model_state_dict")
ZIP_MAGIC = b"PK\x03\x04"


def _is_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return 0 < length <= size - 8 and head[8:9] == b"{"


def sniff(path: str | Path) -> str:
    """``"torch-zip"``, ``"torch-legacy"`` or ``"safetensors"``; anything else is a WeightsError
    that says what the file is (missing, a directory, empty, truncated, not a checkpoint)."""
    path = Path(path)
    if path.is_dir():
        raise WeightsError(f"checkpoint '{path}' is a directory, not a file",
                           fix="pass the .pt/.pth/.safetensors file inside it")
    if not path.exists():
        raise WeightsError(f"checkpoint '{path}' does not exist", fix="check the path")
    size = path.stat().st_size
    if size == 0:
        raise WeightsError(f"checkpoint '{path}' is empty (0 bytes)",
                           fix="the save was interrupted or the copy failed: save or copy it again")
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError as err:
        raise WeightsError(f"checkpoint '{path}' cannot be read ({err.strerror})",
                           fix="check the file's permissions") from None
    if head.startswith(ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            raise WeightsError(f"checkpoint '{path}' is a truncated or damaged torch.save file "
                               f"({size} bytes; its zip directory is missing)",
                               fix="copy or save it again; the file was cut short")
        return "torch-zip"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "torch-legacy"
    if _is_safetensors(head, size):
        return "safetensors"
    if len(head) > 8 and head[8:9] == b"{" and path.suffix == ".safetensors":
        raise WeightsError(f"checkpoint '{path}' is a truncated safetensors file ({size} bytes, "
                           f"shorter than its header says)", fix="copy or save it again; the file "
                                                                 "was cut short")
    kind = "text" if head[:512].isascii() and b"\0" not in head[:512] else "binary data"
    raise WeightsError(f"checkpoint '{path}' is not a PyTorch or safetensors checkpoint ({kind}, "
                       f"{size} bytes, starts with {head[:8]!r})",
                       fix="pass a file saved with torch.save(model.state_dict(), path) or "
                           "safetensors.torch.save_file")


def _load_safetensors(path: Path) -> dict:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise WeightsError(f"checkpoint '{path}' is a .safetensors file and safetensors is not "
                           "installed", fix="pip install safetensors") from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # SafetensorError: truncated header or data
        raise WeightsError(f"checkpoint '{path}' is a damaged safetensors file ({err})",
                           fix="copy or save it again; the file was cut short") from None


def _load_torch(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = (str(err).strip().splitlines() or [""])[0]
        if "Unsupported global" in str(err) or "weights_only" in str(err):
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
            what = (f"it pickles an object of class {found.group(1)}, e.g. a whole model saved with "
                    "torch.save(model, ...)" if found else first)
            raise WeightsError(f"checkpoint '{path}' needs arbitrary code execution to load "
                               f"(weights_only=True refused it: {what})", fix=SAVE_FIX) from None
        raise WeightsError(f"checkpoint '{path}' is a damaged pickle ({first})",
                           fix="copy or save it again") from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, struct.error) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise WeightsError(f"checkpoint '{path}' is truncated or damaged ({first})",
                           fix="copy or save it again; the file was cut short") from None


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state_dict in ``path`` (tensors by parameter name, ``module.`` prefix stripped)."""
    path = Path(path)
    kind = sniff(path)
    obj = _load_safetensors(path) if kind == "safetensors" else _load_torch(path)
    for key in NESTED_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        what = type(obj).__name__ if not isinstance(obj, dict) else "an empty dict"
        raise WeightsError(f"checkpoint '{path}' holds {what}, not a state_dict of tensors",
                           fix=SAVE_FIX)
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        keys = json.dumps([str(k) for k in bad[:3]])
        nested = [str(k) for k, v in obj.items() if isinstance(v, dict) and v
                  and all(isinstance(t, torch.Tensor) for t in v.values())]
        fix = ("save the state_dict itself, or a dict with it under 'state_dict' or 'model'"
               + (f"; it holds state dicts under {json.dumps(nested)}: save the one to export, e.g. "
                  f"python -c \"import torch; torch.save(torch.load('{path}')['{nested[0]}'], "
                  f"'{path.stem}.{nested[0]}.pth')\"" if nested else ""))
        raise WeightsError(f"checkpoint '{path}' is a dict whose entries {keys} are not tensors "
                           f"(keys: {[str(k) for k in list(obj)[:5]]})", fix=fix)
    return {str(k).removeprefix("module."): v for k, v in obj.items()}
