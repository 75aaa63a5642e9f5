"""The two-stage plan: patch level on the first lambda of the token budget, then token level."""

from __future__ import annotations

import dataclasses

from pcomp.errors import ConfigError
from pcomp.patching.loss import check_patch_size


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str  # "patch" or "token"
    patch_size: int  # K; 1 at token level
    steps: int  # optimizer steps in this stage (each stage has its own warmup + cosine schedule)
    seq_tokens: int  # tokens per training sequence = K * model positions

    def tokens(self, batch_size: int) -> int:
        return self.steps * batch_size * self.seq_tokens


def plan_stages(*, token_budget: int, batch_size: int, seq_len: int, patch_size: int,
                patch_fraction: float) -> list[Stage]:
    """Split a token budget D into [patch stage (lambda D tokens), token stage ((1 - lambda) D)].

    `seq_len` is the number of model positions. With K = 1 (or lambda = 0) this is one ordinary
    token-level stage; with lambda = 1 only the patch stage runs.
    """
    check_patch_size(patch_size * seq_len, patch_size)
    if not 0.0 <= patch_fraction <= 1.0:
        raise ConfigError(f"patch_fraction={patch_fraction} must be in [0, 1]")
    token_seq = batch_size * seq_len
    if patch_size == 1 or patch_fraction == 0.0:
        return [Stage("token", 1, max(1, round(token_budget / token_seq)), seq_len)]
    stages = []
    patch_steps = round(patch_fraction * token_budget / (token_seq * patch_size))
    token_steps = round((1.0 - patch_fraction) * token_budget / token_seq)
    if patch_fraction > 0:
        stages.append(Stage("patch", patch_size, max(1, patch_steps), patch_size * seq_len))
    if patch_fraction < 1:
        stages.append(Stage("token", 1, max(1, token_steps), seq_len))
    return stages
