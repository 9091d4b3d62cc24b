"""Canary of a challenger policy, stopped automatically by an always-valid sequential test.

:mod:`router.canary.controller` splits the traffic and stops a worse challenger;
:mod:`router.canary.sequence` holds the confidence sequences of its test.
"""

from router.canary.controller import ARMS, PENDING_MAX, Arm, CanaryController
from router.canary.sequence import ArmStats, RunningMean, cs_radius

__all__ = ["ARMS", "PENDING_MAX", "Arm", "ArmStats", "CanaryController", "RunningMean", "cs_radius"]
