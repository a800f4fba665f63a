"""Weight averaging of fine-tuned checkpoints ("model soup").

Two fine-tunes of one network from a common ancestor (the same architecture, text encoder and
preprocessing) can be averaged weight by weight: the average often keeps what each learnt
(docs/training.md, ``structures-dr45``). Averaging is refused unless every checkpoint has the
same network config, text encoder, preprocessing and tensor names, shapes and dtypes, since
an average over different networks has no meaning. Integer tensors (counters) must agree.

The result is an ordinary checkpoint folder. Its ``config.json`` is that of the last
checkpoint given, with ``weight_average`` recording each source (path, weights digest,
weight); the training split is the union of the sources' (a case any source trained on is
a training case of the average); ``metrics`` is dropped, since no validation ran on the
average.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from model.errors import CheckpointMismatchError, ConfigurationError
from model.files import file_digest
from model.network.checkpoint import WEIGHTS, read_config, write_checkpoint_files

_SAME = ("network", "text_encoder", "text_encoder_name", "preprocessing", "structure_rules")


def _check_alike(docs: Sequence[dict[str, Any]], folders: Sequence[Path]) -> None:
    """Refuse checkpoints that differ in anything but their weights and history."""
    for key in _SAME:
        values = {json.dumps(doc.get(key), sort_keys=True) for doc in docs}
        if len(values) > 1:
            raise CheckpointMismatchError(
                f"cannot average checkpoints with different {key}: "
                + ", ".join(str(f) for f in folders)
            )


def _average(
    states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float], folders: Sequence[Path]
) -> dict[str, torch.Tensor]:
    """The weighted mean of each floating-point tensor; integer tensors must be equal."""
    names = set(states[0])
    for state, folder in zip(states[1:], folders[1:], strict=True):
        if set(state) != names:
            raise CheckpointMismatchError(f"{folder} holds other tensors than {folders[0]}")
    out: dict[str, torch.Tensor] = {}
    for name in sorted(names):
        first = states[0][name]
        for state, folder in zip(states[1:], folders[1:], strict=True):
            t = state[name]
            if t.shape != first.shape or t.dtype != first.dtype:
                raise CheckpointMismatchError(f"{name} differs in shape or dtype in {folder}")
        if first.is_floating_point():
            acc = torch.zeros(first.shape, dtype=torch.float64)
            for state, w in zip(states, weights, strict=True):
                acc += w * state[name].to(torch.float64)
            out[name] = acc.to(first.dtype).contiguous()
        else:
            if any(not torch.equal(state[name], first) for state in states[1:]):
                raise CheckpointMismatchError(f"integer tensor {name} differs between sources")
            out[name] = first.contiguous()
    return out


def _union_split(docs: Sequence[dict[str, Any]]) -> dict[str, list[str]] | None:
    """Training cases of any source; validation cases that no source trained on."""
    splits: list[dict[str, Any]] = [
        doc["split"] for doc in docs if isinstance(doc.get("split"), dict)
    ]
    if not splits:
        return None
    train = sorted({case for split in splits for case in split.get("train", [])})
    seen = set(train)
    val = sorted({case for split in splits for case in split.get("val", [])} - seen)
    return {"train": train, "val": val}


def average_checkpoints(
    folders: Sequence[Path], out: Path, weights: Sequence[float] | None = None
) -> str:
    """Write the weighted average of ``folders`` to ``out``; returns its weights digest.

    ``weights`` (default equal) must be positive; they are normalised to sum to 1.
    """
    if len(folders) < 2:
        raise ConfigurationError("averaging needs at least two checkpoints")
    raw = [1.0] * len(folders) if weights is None else [float(w) for w in weights]
    if len(raw) != len(folders) or any(w <= 0 for w in raw):
        raise ConfigurationError("give one positive weight per checkpoint")
    norm = [w / sum(raw) for w in raw]
    docs = [read_config(folder) for folder in folders]
    _check_alike(docs, folders)
    states = [load_file(str(folder / WEIGHTS)) for folder in folders]
    tensors = _average(states, norm, folders)
    doc = {k: v for k, v in docs[-1].items() if k not in ("metrics", "split", "init_from")}
    split = _union_split(docs)
    if split is not None:
        doc["split"] = split
    doc["saved_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    doc["weight_average"] = [
        {"checkpoint": str(folder), "weights_digest": file_digest(folder / WEIGHTS), "weight": w}
        for folder, w in zip(folders, norm, strict=True)
    ]
    return write_checkpoint_files(out, tensors, doc)


def cmd_average(args: argparse.Namespace) -> int:
    """``llmctv average-checkpoints``: write the average and print its digest."""
    digest = average_checkpoints(args.checkpoints, args.out, args.weights)
    print(f"wrote {args.out} (weights SHA-256 {digest[:12]})")
    return 0


def register(sub: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    """Add ``average-checkpoints`` to the ``llmctv`` command line."""
    p: argparse.ArgumentParser = sub.add_parser(
        "average-checkpoints",
        help="average the weights of fine-tunes of one network (same config and encoder)",
    )
    p.add_argument("checkpoints", type=Path, nargs="+", help="checkpoint folders (two or more)")
    p.add_argument("--out", type=Path, required=True, help="folder of the averaged checkpoint")
    p.add_argument("--weights", type=float, nargs="+", help="one per checkpoint (default equal)")
    p.set_defaults(func=cmd_average)
    return p
