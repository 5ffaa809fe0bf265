"""System-prompt leakage guard (PromptKeeper, Jiang, Jin, He, Findings of EMNLP 2025).

Pure parts of the guard: the statistic (a response's mean log-likelihood given the system prompt),
the two-Gaussian likelihood-ratio test and its calibration, the calibration cache, the shipped question
sets and the leakage metrics of the benchmark. Engines, routing and the gateway step live in
``oserve.runtime`` (``runtime/guard_backend.py``, ``runtime/gateway/guard_step.py``).
"""

from oserve.guard.cache import CalibrationCache, read_calibration
from oserve.guard.calibration import Calibration, CalibrationBackend, SamplingSettings, calibrate
from oserve.guard.config import GuardConfig, load_guard_config
from oserve.guard.statistic import mean_log_likelihood, system_prompt_of, without_system
from oserve.guard.threshold import GaussianFit, RejectionRegion, likelihood_ratio_region

__all__ = ["Calibration", "CalibrationBackend", "CalibrationCache", "GaussianFit", "GuardConfig",
           "RejectionRegion", "SamplingSettings", "calibrate", "likelihood_ratio_region",
           "load_guard_config", "mean_log_likelihood", "read_calibration", "system_prompt_of",
           "without_system"]
