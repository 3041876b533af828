"""Run text through a model and collect what data-aware methods need, one block at a time.

``Calibration.from_text(tokenizer, text, windows=..., length=...)`` makes the token windows;
``calibrate_sequential`` runs them block by block (:mod:`lowbit.calibration.sequential`),
collecting per-Linear :class:`LayerStats` (:mod:`lowbit.calibration.stats`).
"""

from lowbit.calibration.sequential import calibrate_sequential
from lowbit.calibration.stats import LayerStats, StatsAccumulator, collect_stats
from lowbit.calibration.windows import Calibration

__all__ = ["Calibration", "LayerStats", "StatsAccumulator", "calibrate_sequential",
           "collect_stats"]
