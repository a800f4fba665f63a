"""The contouring engine of one process: the loaded model, used by one job at a time.

The job runners (the embedded worker and the Celery workers) build one :class:`ContourEngine`
around a :class:`~model.inference.Predictor` and inject it into
:func:`model.contouring.structure_set.contour_structure_set`, as MONAI's inferers take the
network. Nothing is loaded here: torch comes with the predictor.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from model.dataset.prescription import Prescription
from model.dataset.stage_rule import StageRule
from model.errors import NoteTooLongError
from model.imaging.confidence import confidence_of_sides
from model.imaging.geometry import Grid, Volume
from model.imaging.plausibility import PlausibilityReport, plausibility_of_sides
from model.imaging.postprocessing import added, structures_of_sides
from model.text.clinical import ClinicalRecord, mirrored_note

if TYPE_CHECKING:
    from model.inference import Prediction, Predictor, ProgressFn

log = logging.getLogger(__name__)
IMPLAUSIBLE = "implausible"


@dataclass
class EngineResult:
    """One contouring pass on the input grid."""

    mask: npt.NDArray[np.bool_]
    timings: dict[str, float]
    windows: int
    structures: dict[tuple[str, str], npt.NDArray[np.bool_]] = field(default_factory=dict)
    removed_cc: dict[str, float] = field(default_factory=dict)
    plausibility: PlausibilityReport | None = None
    confidence: dict[tuple[str, str], float] = field(default_factory=dict)


class ContourEngine:
    """One process's model, used by one job at a time.

    Parameters
    ----------
    predictor
        The loaded network (and text side).
    """

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self._lock = threading.Lock()

    @property
    def checkpoint_hash(self) -> str:
        """Short hash of the loaded checkpoint (recorded in jobs and the RTSTRUCT)."""
        return self.predictor.checkpoint_hash

    @property
    def multimodal(self) -> bool:
        """Whether the network reads the clinical text."""
        return self.predictor.network.alignment is not None

    def window_count(self, grid: Grid) -> int:
        """Sliding windows one pass over a CT on ``grid`` (LPS) takes; no array is built."""
        from model.imaging.preprocessing import plan_resampling
        from model.network.sliding_window import count_windows

        pre = self.predictor.preprocess
        plan = plan_resampling(grid, pre.target_spacing, orientation=pre.orientation)
        roi = self.predictor.network.config.roi_size
        return count_windows(plan.target.shape, roi, self.predictor.overlap)

    def check_note(self, note: str) -> None:
        """Refuse a note longer than the text encoder reads (``note_too_long``; never cut)."""
        from model.network.context import MAX_NOTE_TOKENS

        context = self.predictor.context
        if not self.multimodal or context is None or not context.has_encoder:
            return
        notes = [note]
        if self.predictor.mirrors:  # mirror TTA encodes the mirrored note too
            notes.append(mirrored_note(note))
        for ids in context.encoder.tokenize(notes):
            if len(ids) > MAX_NOTE_TOKENS:
                raise NoteTooLongError(
                    f"note: {len(ids)} tokens; the text encoder reads at most {MAX_NOTE_TOKENS}"
                )

    def contour(self, volume: Volume, note: str, progress: ProgressFn | None) -> EngineResult:
        """Contour ``volume`` (HU, LPS grid) for ``note``; mask on the input grid ``(k, j, i)``."""
        self.check_note(note)
        with self._lock:
            pred: Prediction = self.predictor.predict(
                volume, note if self.multimodal else None, progress=progress
            )
        return _result(pred)

    def contour_record(
        self, volume: Volume, record: ClinicalRecord, progress: ProgressFn | None
    ) -> EngineResult:
        """Contour ``volume`` for a clinical record.

        A structure network contours a bilateral record without a free-text note side by side:
        each side with its own one-sided note, keeping that side's structures (as
        :meth:`model.inference.Predictor.predict_record`); otherwise one :meth:`contour`. What
        the record does not call for (:attr:`prescription`) is then removed, with its reason
        (``note rule: ...``, ``site rule: ...``) as an entry of ``removed_cc``.
        """
        parts = record.per_side() if self.multimodal and self.has_structures else ()
        if not parts:
            result = self.contour(volume, record.prompt_text(), progress)
        else:
            from model.inference import scaled_progress

            results = []
            for index, part in enumerate(parts):
                start, share = index / len(parts), 1 / len(parts)
                step = scaled_progress(progress, start, share)
                results.append(self.contour(volume, part.prompt_text(), step))
            result = _merged(results, tuple(p.diagnoses[0].side.letter for p in parts))
        rule = self.prescription
        outcome = (
            None
            if rule is None
            else rule.apply(result.structures, result.confidence, record, volume.grid.spacing)
        )
        if outcome is None:
            return result
        return replace(
            result,
            mask=outcome.union,
            structures=outcome.structures,
            removed_cc={**result.removed_cc, **outcome.removed_cc},
            confidence=outcome.confidence,
        )

    @property
    def prescription(self) -> Prescription | None:
        """What a record calls for in this version (:mod:`model.dataset.prescription`)."""
        return self.predictor.prescription

    @property
    def stage_rule(self) -> StageRule | None:
        """The version's N-stage rule (:mod:`model.dataset.stage_rule`), if it has one."""
        rule = self.prescription
        return None if rule is None else rule.stage_rule

    @property
    def has_structures(self) -> bool:
        """Whether the network predicts sub-volumes (breast, nodes...) rather than one CTV."""
        return bool(self.predictor.network.config.structures)


def _result(pred: Prediction) -> EngineResult:
    """The engine's view of a prediction: masks, timings and what cleaning removed (cc)."""
    removed: dict[str, float] = {}
    if pred.cleaning is not None:
        removed = {"outside the body": pred.cleaning.outside_body_cc}
        removed.update(pred.cleaning.islands_cc)
    removed = with_implausible(removed, pred.plausibility)
    return EngineResult(
        pred.mask,
        dict(pred.timings),
        pred.windows,
        dict(pred.structures),
        removed,
        pred.plausibility,
        dict(pred.confidence),
    )


def with_implausible(
    removed: dict[str, float], plausibility: PlausibilityReport | None
) -> dict[str, float]:
    """``removed`` (cleaning) and the anatomical rules' removals, labelled ``implausible: ...``."""
    if plausibility is None:
        return removed
    implausible = {f"{IMPLAUSIBLE}: {k}": v for k, v in plausibility.removed_cc.items()}
    return {**removed, **implausible}


def _merged(results: list[EngineResult], sides: tuple[str, ...]) -> EngineResult:
    """Pass ``n`` gives the structures of ``sides[n]``; the CTV is their union."""
    structures, union = structures_of_sides([r.structures for r in results], sides)
    mask = np.zeros(results[0].mask.shape, dtype=bool) if union is None else union
    timings = added([r.timings for r in results])
    plausibility = plausibility_of_sides([r.plausibility for r in results], sides)
    cleaning = [
        {k: v for k, v in r.removed_cc.items() if not k.startswith(IMPLAUSIBLE)} for r in results
    ]
    removed = with_implausible(added(cleaning), plausibility)
    windows = sum(r.windows for r in results)
    confidence = confidence_of_sides([r.confidence for r in results], sides)
    return EngineResult(mask, timings, windows, structures, removed, plausibility, confidence)
