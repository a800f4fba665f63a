"""Sliding-window inference on one CT, with the context embedding computed once.

The CT is resampled to the network grid (:mod:`model.imaging.preprocessing`), the network runs over
overlapping windows (MONAI, gaussian blending, several windows per batch, AMP on CUDA), and
the foreground probability is taken back to the input CT grid through patient coordinates,
so the returned mask lies on the input grid ``(k, j, i)`` exactly where the CT is.

The language model never runs per window: ``g`` is computed (or looked up) once per note and
shared by every window.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from model.dataset.prescription import SPEC_PRESCRIPTION, Prescription
from model.dataset.structure_map import borders_of
from model.dataset.structure_targets import map_from_meta
from model.errors import ConfigurationError
from model.imaging.borders import SPEC_BORDERS, BorderPolicy, apply_borders
from model.imaging.confidence import confidence_of_sides, structure_confidence
from model.imaging.geometry import Volume
from model.imaging.plausibility import (
    PlausibilityReport,
    check_structures,
    find_landmarks,
    plausibility_of_sides,
)
from model.imaging.postprocessing import (
    CleaningPolicy,
    CleaningReport,
    OnVoxels,
    added,
    body_mask,
    clean_prediction,
    midline_x,
    structures_of_sides,
    tidy_labels,
)
from model.imaging.preprocessing import PreprocessConfig, preprocess_ct
from model.imaging.source_sampling import (
    MapOnSource,
    NearestOnSource,
    network_box,
    source_box_of_network_box,
)
from model.network.checkpoint import Checkpoint, attach_encoder, detached_context, load_checkpoint
from model.network.context import ContextCache, ContextStore, PromptContext, contexts_for
from model.network.segmenter import ContourNet
from model.network.sliding_window import sliding_window_classes
from model.text.clinical import ClinicalRecord, mirrored_note
from model.text.encoders import load_text_encoder

log = logging.getLogger(__name__)

ProgressFn = Callable[[float], None]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class Prediction:
    """A predicted target on the input CT grid.

    Attributes
    ----------
    mask
        bool ``(k, j, i)`` on the input CT's grid: the whole CTV (union of the structures),
        inside the body, islands removed.
    probability
        float32 foreground probability (1 - background) on the same grid, before cleaning;
        0 where the network's foreground is below 0.25 in every nearby voxel: an array, or
        the network's map resampled on demand (:meth:`probability_map` gives the array).
    timings
        Seconds per stage (``preprocess``, ``context``, ``network``, ``postprocess``).
    windows
        Sliding windows evaluated.
    structures
        Per structure and side (``(name, side)``, side ``"L"``/``"R"``), bool ``(k, j, i)``
        masks on the CT grid; a single-CTV network gives ``("ctv", side)`` entries.
    cleaning
        What postprocessing removed (cc outside the body, islands per structure).
    plausibility
        What the anatomical rules removed (:mod:`model.imaging.plausibility`), and whether
        the CT showed the lungs they need.
    confidence
        Mean class probability per kept (structure, side) (:mod:`model.imaging.confidence`).
    rule_removed_cc
        Structures the record does not call for, removed, cc by reason (``"note rule: ..."``,
        ``"site rule: ..."``: :mod:`model.dataset.prescription`;
        :meth:`Predictor.predict_record` only).
    """

    mask: npt.NDArray[np.bool_]
    probability: npt.NDArray[np.float32] | MapOnSource
    timings: dict[str, float] = field(default_factory=dict)
    windows: int = 0
    structures: dict[tuple[str, str], npt.NDArray[np.bool_]] = field(default_factory=dict)
    cleaning: CleaningReport | None = None
    plausibility: PlausibilityReport | None = None
    confidence: dict[tuple[str, str], float] = field(default_factory=dict)
    rule_removed_cc: dict[str, float] = field(default_factory=dict)

    def probability_map(self) -> npt.NDArray[np.float32]:
        """:attr:`probability` as a float32 array on the CT grid."""
        if isinstance(self.probability, MapOnSource):
            return self.probability.full()
        return self.probability


class Predictor:
    """Runs a trained network on CT volumes.

    Parameters
    ----------
    network
        The segmentation network (multimodal or vision-only).
    context
        The text side with its encoder attached (``None`` for vision-only, or when every
        note's ``g`` is passed in directly).
    preprocess
        Must match what the network was trained with.
    overlap, sw_batch_size
        Sliding-window overlap fraction and windows per forward batch.
    cache
        Where g is looked up and stored (an in-process :class:`ContextCache` by default).
    cleaning
        Postprocessing on the CT grid: body mask, islands (:mod:`model.imaging.postprocessing`).
    checkpoint_hash
        Short hash of the checkpoint (recorded with results).
    prescription
        What a clinical record calls for under the structure map the checkpoint was trained
        with (sides, surgery, N stage and the site's N-stage rule), applied by
        :meth:`predict_record` (the spec's convention by default; ``None``: the network
        alone).
    mirror_tta
        Test-time augmentation: a multimodal network given a note also contours the mirrored
        patient with the mirrored note, and the two are averaged (twice the network time;
        measured in ``docs/site-adaptation.md``). The mirrored note's ``g`` is cached like
        any note's.
    borders
        The borders of the superficial CTVs applied on the CT grid, skin margin and ribs
        (:mod:`model.imaging.borders`; the specification's by default; a checkpoint's
        structure map may set its own).

    The text encoder, when attached, is moved to the same device as the network.
    """

    def __init__(
        self,
        network: ContourNet,
        context: PromptContext | None = None,
        *,
        preprocess: PreprocessConfig | None = None,
        device: str | torch.device = "auto",
        overlap: float = 0.25,
        sw_batch_size: int = 2,
        cache: ContextStore | None = None,
        checkpoint_hash: str = "",
        cleaning: CleaningPolicy | None = None,
        prescription: Prescription | None = SPEC_PRESCRIPTION,
        mirror_tta: bool = False,
        borders: BorderPolicy = SPEC_BORDERS,
    ) -> None:
        self.device = resolve_device(str(device))
        self.network = network.to(self.device).eval()
        self.context = context
        if context is not None and context.has_encoder:
            context.encoder.model.to(self.device)
        self.preprocess = preprocess or PreprocessConfig()
        self.overlap = overlap
        self.sw_batch_size = sw_batch_size
        self.cache: ContextStore = cache if cache is not None else ContextCache()
        self.checkpoint_hash = checkpoint_hash
        self.cleaning = cleaning or CleaningPolicy()
        self.prescription = prescription
        self.mirror_tta = mirror_tta
        self.borders = borders

    @classmethod
    def from_checkpoint(
        cls,
        folder: Path,
        *,
        text_encoder: str | Path | None = None,
        device: str = "auto",
        overlap: float = 0.25,
        sw_batch_size: int = 2,
        cache: ContextStore | None = None,
        with_text_encoder: bool = True,
        mirror_tta: bool = False,
    ) -> Predictor:
        """Load a checkpoint; its stored text encoder name is used unless one is given.

        With ``with_text_encoder=False`` the language model is never loaded: g comes from
        ``cache`` only, and an uncached note raises
        :class:`~model.errors.ContextNotCachedError`.
        """
        ckpt = load_checkpoint(folder, device="cpu")
        if with_text_encoder or ckpt.context is None:
            context = _context_for(ckpt, text_encoder)
        else:
            context = detached_context(ckpt)
        site_map = map_from_meta(dict(ckpt.meta))  # the structure map it was trained with
        pre = ckpt.meta.get("preprocessing") or {}
        # Always LPS-canonical: a checkpoint trained with "source" on head-first supine data
        # (identity direction, where both grids agree) would otherwise see a feet-first or
        # prone-stored series mirrored and contour the opposite side.
        preprocess = PreprocessConfig(
            target_spacing=tuple(pre.get("target_spacing", (3.0, 1.0, 1.0))),
            hu_window=tuple(pre.get("hu_window", (-1000.0, 1000.0))),
            orientation="lps",
        )
        return cls(
            ckpt.network,
            context,
            preprocess=preprocess,
            device=device,
            checkpoint_hash=ckpt.short_hash,
            overlap=overlap,
            sw_batch_size=sw_batch_size,
            cache=cache,
            prescription=Prescription.of_map(site_map),
            mirror_tta=mirror_tta,
            borders=borders_of(site_map),
        )

    def context_for(self, note: str) -> torch.Tensor:
        """``g`` for one note, ``(1, N, D)``, from the cache or one encoder pass."""
        if self.context is None:
            raise ConfigurationError("this predictor has no text encoder attached")
        return contexts_for(self.context, [note], self.cache)

    @torch.no_grad()
    def predict(
        self,
        volume: Volume,
        note: str | None = None,
        *,
        context: torch.Tensor | None = None,
        progress: ProgressFn | None = None,
    ) -> Prediction:
        """Contour one CT. Give ``note`` or a precomputed ``context`` (multimodal only; a
        context alone is never mirrored, see ``mirror_tta``)."""
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        image, plan = preprocess_ct(volume, self.preprocess)
        timings["preprocess"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        g = self._context(note, context)
        g_mirrored = self._mirrored_context(note)
        timings["context"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        probs, windows = self._probabilities(image, g, g_mirrored, progress)
        timings["network"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        fg = np.clip(1.0 - probs[0], 0.0, 1.0)
        reach = network_box(fg >= 0.25)  # what the CTV's interpolation can read
        box = None if reach is None else source_box_of_network_box(reach, plan)
        foreground = MapOnSource(fg, plan, box)
        body = body_mask(volume, self.cleaning)
        labels: OnVoxels | None = None
        seeds: OnVoxels | None = None
        net_labels = None
        mid_x = midline_x(body, volume.grid)
        if len(probs) > 2 and reach is not None:
            net_labels, net_seeds = tidy_labels(probs, plan.target, mid_x, region=reach)
            # Read at the CTV's voxels only, from the network grid (nearest voxel).
            nearest = NearestOnSource(plan)
            labels = partial(nearest, net_labels)
            seeds = partial(_seed_at, nearest, net_seeds)
        names = self.network.config.structure_names
        cleaned = clean_prediction(
            volume,
            foreground.at_least(0.5),
            labels,
            names,
            self.cleaning,
            body=body,
            seeds=seeds,
            mid_x=mid_x,
        )
        timings["postprocess"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        # What the network drew in the wrong place is judged (and reported) before the
        # borders trim the rest: a chest wall inside the chest is a finding, not a border.
        marks = find_landmarks(volume, body, mid_x)
        plausible, plausibility = check_structures(
            volume,
            cleaned.structures,
            marks,
            mid_x,
            self.cleaning.min_structure_cc,
            boxes=cleaned.boxes,
        )
        bounded = apply_borders(
            volume.array,
            body,
            plausible,
            volume.grid.spacing,
            self.borders,
            cleaned.boxes,
        )
        cleaned.report.borders_cc = bounded.removed_cc
        structures = bounded.structures
        union = cleaned.union  # the structures' union, less what the rules removed
        for key, mask in cleaned.structures.items():
            left = structures.get(key)
            if left is not mask:
                where = cleaned.boxes[key]
                union[where] &= ~mask[where] if left is None else ~mask[where] | left[where]
        timings["plausibility"] = time.perf_counter() - t0
        confidence = structure_confidence(probs, net_labels, plan.target, mid_x, names)
        confidence = {key: value for key, value in confidence.items() if key in structures}
        return Prediction(
            union,
            foreground,
            timings,
            windows,
            structures,
            cleaned.report,
            plausibility,
            confidence,
        )

    def predict_record(
        self,
        volume: Volume,
        record: ClinicalRecord,
        *,
        progress: ProgressFn | None = None,
        prescribed: bool = True,
    ) -> Prediction:
        """Contour one CT for a clinical record.

        One pass with the record's note, except for a structure network and a bilateral
        record without a free-text note: then each side is contoured with its own one-sided
        note and keeps only its own side's structures (:func:`merged_sides`), which costs a
        second network pass. The context of a bilateral note encodes its second clause's N
        stage weakly, while one-sided notes are read well on either side (measured in
        ``docs/structure-sets.md``). What the record does not call for (:attr:`prescription`:
        a side it does not name, the other surgery's structure, nodes for N0 or where the
        version's N-stage rule does not draw them) is then removed and reported;
        ``prescribed=False`` keeps it (the network alone: what it reads from the text).
        """
        parts = record.per_side() if self.network.config.structures else ()
        if not parts:
            prediction = self.predict(volume, record.prompt_text(), progress=progress)
        else:
            predictions = []
            for index, part in enumerate(parts):
                share = scaled_progress(progress, index / len(parts), 1 / len(parts))
                predictions.append(self.predict(volume, part.prompt_text(), progress=share))
            sides = tuple(p.diagnoses[0].side.letter for p in parts)
            prediction = merged_sides(predictions, sides)
        rule = self.prescription if prescribed else None
        outcome = (
            None
            if rule is None
            else rule.apply(
                prediction.structures, prediction.confidence, record, volume.grid.spacing
            )
        )
        if outcome is None:
            return prediction
        return replace(
            prediction,
            mask=outcome.union,
            structures=outcome.structures,
            confidence=outcome.confidence,
            rule_removed_cc=outcome.removed_cc,
        )

    def _mirrored_context(self, note: str | None) -> torch.Tensor | None:
        """``g`` of the mirrored patient's note when mirror TTA applies, else ``None``.

        It applies to a multimodal network given a note that names a side as "left" or
        "right" (:func:`~model.text.clinical.mirrored_note`); a bare context cannot be
        mirrored, and a note spelling the side otherwise ("Lt") is contoured once.
        """
        if not self.mirrors or note is None:
            return None
        mirrored = mirrored_note(note)
        if mirrored == note:  # no "left" or "right" to swap: the mirror would keep the side
            log.info("mirror TTA skipped: the note names no side in words it can swap")
            return None
        return self.context_for(mirrored).to(self.device)

    @property
    def mirrors(self) -> bool:
        """Whether mirror TTA runs: asked for, on a multimodal network (a vision-only network
        reads the side from the image alone)."""
        return self.mirror_tta and self.network.alignment is not None

    def _probabilities(
        self,
        image: npt.NDArray[np.float32],
        g: torch.Tensor | None,
        g_mirrored: torch.Tensor | None,
        progress: ProgressFn | None,
    ) -> tuple[npt.NDArray[np.float32], int]:
        """Class probabilities on the network grid, and the windows run.

        With ``g_mirrored`` (mirror test-time augmentation), the patient is also contoured
        mirrored: the network grid is LPS-canonical, so reversing its column axis ``i``
        reflects the patient through the plane x = const at the grid's centre, exactly the
        mirror the network was trained with (:mod:`model.training.augmentation`); the
        mirrored note names the other side. The two probability maps, the second reflected
        back, are averaged (twice the network time).
        """
        kwargs: dict[str, Any] = {"overlap": self.overlap, "sw_batch_size": self.sw_batch_size}
        if g_mirrored is None:
            return sliding_window_classes(self.network, image, g, progress=progress, **kwargs)
        first, windows = sliding_window_classes(
            self.network, image, g, progress=scaled_progress(progress, 0.0, 0.5), **kwargs
        )
        reflected = np.ascontiguousarray(image[:, :, ::-1])
        second, more = sliding_window_classes(
            self.network,
            reflected,
            g_mirrored,
            progress=scaled_progress(progress, 0.5, 0.5),
            **kwargs,
        )
        first += second[:, :, :, ::-1]
        first *= np.float32(0.5)
        return first, windows + more

    def _context(self, note: str | None, context: torch.Tensor | None) -> torch.Tensor | None:
        if self.network.alignment is None:
            return None
        if context is not None:
            return context.reshape(1, *context.shape[-2:]).to(self.device)
        if note is None:
            raise ConfigurationError("the multimodal network needs a clinical note or context")
        return self.context_for(note).to(self.device)


def _seed_at(
    nearest: NearestOnSource, seeds: npt.NDArray[np.uint8], points: npt.NDArray[np.intp]
) -> npt.NDArray[np.bool_]:
    """Whether each CT voxel's nearest network voxel is a seed (:func:`tidy_labels`)."""
    found: npt.NDArray[np.bool_] = nearest(seeds, points) > 0
    return found


def scaled_progress(progress: ProgressFn | None, start: float, share: float) -> ProgressFn | None:
    """``progress`` for one of several passes: fraction ``f`` is reported as ``start + share f``."""
    if progress is None:
        return None
    outer = progress
    return lambda fraction: outer(start + share * fraction)


def merged_sides(predictions: list[Prediction], sides: tuple[str, ...]) -> Prediction:
    """One prediction from per-side passes: pass ``n`` gives the structures of ``sides[n]``.

    The CTV is the union of the kept structures; probabilities are the voxel-wise maximum;
    timings, windows and what cleaning removed are added up.
    """
    structures, union = structures_of_sides([p.structures for p in predictions], sides)
    mask = np.zeros(predictions[0].mask.shape, dtype=bool) if union is None else union
    reports = [p.cleaning for p in predictions if p.cleaning is not None]
    cleaning = CleaningReport(
        outside_body_cc=sum(r.outside_body_cc for r in reports),
        islands_cc=added([r.islands_cc for r in reports]),
        borders_cc={
            why: added([r.borders_cc.get(why, {}) for r in reports])
            for why in sorted({why for r in reports for why in r.borders_cc})
        },
    )
    probability = np.maximum.reduce([p.probability_map() for p in predictions])
    timings = added([p.timings for p in predictions])
    windows = sum(p.windows for p in predictions)
    plausibility = plausibility_of_sides([p.plausibility for p in predictions], sides)
    confidence = confidence_of_sides([p.confidence for p in predictions], sides)
    return Prediction(
        mask, probability, timings, windows, structures, cleaning, plausibility, confidence
    )


def _context_for(ckpt: Checkpoint, text_encoder: str | Path | None) -> PromptContext | None:
    if ckpt.context is None:
        return None
    name = text_encoder or ckpt.meta.get("text_encoder_name")
    if name is None:
        raise ConfigurationError("checkpoint names no text encoder; pass --text-encoder")
    return attach_encoder(ckpt, load_text_encoder(name))
