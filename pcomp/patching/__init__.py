"""Patch-level training: `patchify`, `next_patch_loss` and the two-stage K / lambda plan."""

from pcomp.patching.loss import check_patch_size, next_patch_loss, next_patch_nll, patchify, relative_cost
from pcomp.patching.schedule import Stage, plan_stages

__all__ = [
    "Stage",
    "check_patch_size",
    "next_patch_loss",
    "next_patch_nll",
    "patchify",
    "plan_stages",
    "relative_cost",
]
