"""Settings of a distillation run (no MLX needed to build or check them)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SLMError

DIVERGENCES = ("forward", "reverse", "skew", "jsd")


@dataclass
class DistillConfig:
    """Settings of a distillation run (defaults suit a 100M-parameter student on a laptop)."""

    steps: int = 100
    batch_size: int = 4
    seq_len: int = 256
    grad_accum: int = 1
    learning_rate: float = 1e-4
    warmup_steps: int = 0
    weight_decay: float = 0.0
    alpha: float = 0.5              # weight of the cross-entropy with the text
    temperature: float = 2.0
    divergence: str = "forward"     # forward | reverse | skew | jsd
    skew: float = 0.1               # lambda of skew KL, beta of JSD
    feature_weight: float = 0.0     # weight of hidden-state distillation
    feature_layers: tuple = ()      # student layer indices (default: the last one)
    teacher_top_k: int = 0          # > 0: cache the teacher's top-k logits on disk
    top_k_tail: bool = False        # top-k loss over the k tokens + "any other" (else renormalized on the k)
    cache_dir: str = ".mlx_slm_cache"
    grad_checkpoint: bool = False
    eval_every: int = 0
    eval_windows: int = 4
    keep_best: bool = False         # end as the student was at its lowest held-out KL (needs eval_every)
    patience: int = 0               # > 0: stop after this many evaluations without a lower held-out KL
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    seed: int = 0
    qat: dict | None = None         # {"format": "affine"|"ternary", "bits": .., "group_size": ..}
    train_quantized: bool = False   # a quantized student trains through its twins (mlx_slm.quant.fake_quant)
    adopt: bool = True              # train_quantized: latent weights start at the teacher's where those round
                                    # to the stored codes (Twin.adopt), else at the codes' values
    sparsity: dict | None = None    # gradual magnitude pruning, see mlx_slm.distill.sparsity

    def check(self) -> None:
        if self.steps < 1:
            raise SLMError("steps must be at least 1")
        if self.divergence not in DIVERGENCES:
            raise SLMError(f"unknown divergence {self.divergence!r}; choose one of {', '.join(DIVERGENCES)}")
        if self.teacher_top_k and self.feature_weight:
            raise SLMError("feature distillation needs the teacher's hidden states: use it without teacher_top_k")
        if self.train_quantized and (self.qat or self.sparsity):
            raise SLMError("train_quantized trains an already-quantized student: give neither qat nor sparsity")
        if (self.keep_best or self.patience) and not self.eval_every:
            raise SLMError("keep_best and patience follow the held-out KL: give eval_every (and eval text)")
        if self.patience < 0:
            raise SLMError(f"patience must be 0 (never stop early) or more, not {self.patience}")
        if self.top_k_tail and not self.teacher_top_k:
            raise SLMError("top_k_tail is a form of the top-k loss: give teacher_top_k")
        if self.checkpoint_every and not self.checkpoint_dir:
            raise SLMError("checkpoint_every needs checkpoint_dir")
