"""The output head when fine-tuning changes the structures: kept, renamed, new and dropped classes.

A shipped model predicts background plus its structures (``breast``, ``chest_wall``, ...; one
``ctv`` class for a single-CTV model). A site may train other structures: rename some (its
own names), add some (e.g. interpectoral nodes), drop some. Only the last layer depends on
the classes (a transposed convolution whose output channel ``c`` is class ``c``), so:

* a **kept** class (same name, or renamed with ``--class-map OLD=NEW``) keeps its weights and
  bias, copied from the old channel to the new one;
* a **new** class keeps the fresh initialisation of the network being trained;
* a **dropped** class (an old class that no new class takes) is left out;
* ``--class-map OLD=`` drops ``OLD`` even where a new class has the same name (that class then
  starts fresh: e.g. a site whose IMN definition differs).

The background channel is always kept. A single-CTV head given no map seeds every new
structure from its foreground instead (:func:`expand_head`, the older behaviour).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from model.errors import CheckpointMismatchError, ConfigurationError
from model.network.checkpoint import Checkpoint, load_checkpoint
from model.network.context import PromptContext
from model.network.segmenter import ContourNet

log = logging.getLogger(__name__)

HEAD_WEIGHT = "decoder.head.conv.weight"
HEAD_BIAS = "decoder.head.conv.bias"

#: ``(old, new)`` pairs of ``--class-map``; ``new`` empty drops ``old``.
ClassMap = tuple[tuple[str, str], ...]


def parse_class_map(options: Sequence[str]) -> ClassMap:
    """``["imn=CTVn_IMN", "scf="]`` -> ``(("imn", "CTVn_IMN"), ("scf", ""))``.

    Raises
    ------
    ConfigurationError
        An entry without ``=`` or without an old name, or an old name given twice.
    """
    pairs: list[tuple[str, str]] = []
    for option in options:
        old, sep, new = option.partition("=")
        old, new = old.strip(), new.strip()
        if not sep or not old or old in {p[0] for p in pairs}:
            raise ConfigurationError(
                f"--class-map takes distinct OLD=NEW (or OLD=), got {option!r}"
            )
        pairs.append((old, new))
    return tuple(pairs)


@dataclass(frozen=True)
class HeadPlan:
    """What fine-tuning does with each class: ``kept`` (old, new) pairs, ``new``, ``dropped``."""

    kept: tuple[tuple[str, str], ...]
    new: tuple[str, ...]
    dropped: tuple[str, ...]

    def as_meta(self) -> dict[str, object]:
        """The plan as recorded in the checkpoint (``init_from.classes``)."""
        return {
            "kept": {new: old for old, new in self.kept},
            "new": list(self.new),
            "dropped": list(self.dropped),
        }


def plan_head(old: Sequence[str], new: Sequence[str], class_map: ClassMap = ()) -> HeadPlan:
    """Match the old classes to the new ones: the map first, then equal names.

    Raises
    ------
    ConfigurationError
        A map entry names an old class the checkpoint lacks or a new class this run lacks,
        or two old classes map to one new class.
    """
    explicit = dict(class_map)
    for source, target in class_map:
        if source not in old:
            raise ConfigurationError(
                f"--class-map {source}={target}: the checkpoint has no class {source!r} "
                f"(it has {', '.join(old)})"
            )
        if target and target not in new:
            raise ConfigurationError(
                f"--class-map {source}={target}: this run has no class {target!r} "
                f"(it trains {', '.join(new)})"
            )
    targets = [t for t in explicit.values() if t]
    if len(set(targets)) != len(targets):
        raise ConfigurationError("--class-map maps two old classes to one new class")
    kept = {explicit[o]: o for o in old if explicit.get(o)}
    for name in old:
        if name not in explicit and name in new and name not in kept:
            kept[name] = name
    return HeadPlan(
        kept=tuple((kept[n], n) for n in new if n in kept),
        new=tuple(n for n in new if n not in kept),
        dropped=tuple(o for o in old if o not in kept.values()),
    )


def transfer_head(
    old_state: dict[str, torch.Tensor],
    fresh_state: dict[str, torch.Tensor],
    old: Sequence[str],
    new: Sequence[str],
    plan: HeadPlan,
) -> dict[str, torch.Tensor]:
    """``old_state`` with the head rebuilt for ``new``: kept channels copied, new ones fresh.

    ``fresh_state`` is the state of the network being trained (its own initialisation gives
    the new classes' weights). Channel 0 is the background, channel ``c + 1`` class ``c``.
    """
    state = dict(old_state)
    index_old = {name: i + 1 for i, name in enumerate(old)}
    index_new = {name: i + 1 for i, name in enumerate(new)}
    keys = [HEAD_WEIGHT] + ([HEAD_BIAS] if HEAD_BIAS in fresh_state else [])
    for key in keys:
        # ConvTranspose3d weights are (in, out, k, j, i): classes are dimension 1.
        dim = 1 if key == HEAD_WEIGHT else 0
        source, target = old_state[key], fresh_state[key].detach().clone()
        target.select(dim, 0).copy_(source.select(dim, 0))
        for old_name, new_name in plan.kept:
            target.select(dim, index_new[new_name]).copy_(source.select(dim, index_old[old_name]))
        state[key] = target
    return state


def expand_head(
    state: dict[str, torch.Tensor], old_classes: int, new_channels: int
) -> dict[str, torch.Tensor]:
    """Seed a head of ``new_channels`` classes from a single-CTV (background + 1) head.

    Background keeps its weights; every structure gets the old foreground weights (and, when
    the head has a bias, the bias lowered by ``log(S)`` so that the summed structure probability
    equals the old foreground probability). Training then separates the structures.

    Raises
    ------
    CheckpointMismatchError
        The old head has more than one foreground class (nothing to seed from).
    """
    if old_classes != 1:
        raise CheckpointMismatchError("only a single-CTV head can seed new structures")
    weight = state[HEAD_WEIGHT]
    n = new_channels - 1
    # ConvTranspose3d weights are (in, out, k, j, i): classes are dimension 1.
    state = dict(state)
    state[HEAD_WEIGHT] = torch.cat([weight[:, :1]] + [weight[:, 1:2]] * n, dim=1)
    if HEAD_BIAS in state:
        bias = state[HEAD_BIAS]
        state[HEAD_BIAS] = torch.cat([bias[:1]] + [bias[1:2] - math.log(n)] * n)
    return state


def load_weights(
    net: ContourNet,
    context: PromptContext | None,
    folder: Path,
    *,
    allow_new_structures: bool = False,
    class_map: ClassMap = (),
) -> tuple[Checkpoint, dict[str, object] | None]:
    """Load a checkpoint's network and text-side weights into ``net`` and ``context``.

    The checkpoint must have ``net``'s config and ``context``'s text encoder; with
    ``allow_new_structures`` only the output structures may differ, and the head is carried
    over by :func:`plan_head` / :func:`transfer_head` (or :func:`expand_head` from a
    single-CTV head). Returns the checkpoint and the class plan as recorded (``None`` when the
    head was copied whole).

    Raises
    ------
    CheckpointMismatchError
        Another network config or another text encoder.
    """
    mine = net.config
    classes = None
    if not allow_new_structures:
        ckpt = load_checkpoint(folder, expected=mine)
        net.load_state_dict(ckpt.network.state_dict())
    else:
        ckpt = load_checkpoint(folder)
        if ckpt.config.with_structures(mine.structures).to_json() != mine.to_json():
            raise CheckpointMismatchError(f"{folder} has another network config")
        state = ckpt.network.state_dict()
        old, new = ckpt.config.structure_names, mine.structure_names
        if class_map or (old != new and ckpt.config.structures):
            plan = plan_head(old, new, class_map)
            state = transfer_head(state, net.state_dict(), old, new, plan)
            classes = plan.as_meta()
            log.info(  # names of structures, never of patients
                "head: %d classes kept, %d new, %d dropped",
                len(plan.kept),
                len(plan.new),
                len(plan.dropped),
            )
        elif old != new:
            state = expand_head(state, len(old), mine.out_channels)
        net.load_state_dict(state)
    if context is not None:
        if ckpt.text_encoder != context.identity:
            raise CheckpointMismatchError(
                f"{folder} was trained with text encoder {ckpt.text_encoder}, "
                f"this run uses {context.identity}"
            )
        context.load_state_dict(ckpt.text_state)
    return ckpt, classes
