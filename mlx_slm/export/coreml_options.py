"""How a Core ML export is shaped for the device that runs it: input shapes, which logits it returns,
and the compute units those shapes suit (recorded in the manifest, read by SLMKit)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SLMError

SHAPES = ("ranged", "enumerated")
LOGITS = ("all", "last")
DEFAULT_QUERY_LENGTHS = (1, 64)
# Core ML's names (MLComputeUnits cases) of the units each kind of shape runs well on
COMPUTE_UNITS = {"ranged": "cpuAndGPU", "enumerated": "cpuAndNeuralEngine"}


@dataclass(frozen=True)
class CoreMLOptions:
    """shapes: "ranged" (default), swift-transformers' contract: ``inputIds`` [1, 1..C] and ``causalMask``
    [1, 1, 1..C, 2..C+1] (C = max_context); the position and every inner shape follow the mask's width.
    The Neural Engine compiles only fixed or enumerated shapes, so these run on the CPU and GPU.
    "enumerated": ``inputIds`` [1, T] with T one of ``query_lengths`` and ``position`` int32 [1] (P, the
    tokens already cached); attention reads the whole cache through a mask the program makes, so every
    inner shape follows T alone and Core ML can compile each length for the Neural Engine. A caller feeds
    a prompt in chunks of those lengths (1 is always one of them, so any length can be fed).

    query_lengths: the T values of an "enumerated" export, e.g. (1, 64): 1 for decoding, the larger for
    prefill (default: 1 and 64, or max_context if smaller).

    logits: "all" ([1, T, vocab], every position) or "last" ([1, 1, vocab], the last position only: a
    generator reads nothing else, and the vocabulary projection and output copy shrink T-fold).
    """

    shapes: str = "ranged"
    query_lengths: tuple | None = None
    logits: str = "all"

    def check(self, max_context: int) -> CoreMLOptions:
        """The options with query_lengths resolved (sorted, for "enumerated"); one SLMError if they do not fit."""
        if self.shapes not in SHAPES:
            raise SLMError(f"shapes must be one of {SHAPES}, not {self.shapes!r}")
        if self.logits not in LOGITS:
            raise SLMError(f"logits must be one of {LOGITS}, not {self.logits!r}")
        if self.shapes == "ranged":
            if self.query_lengths is not None:
                raise SLMError("query_lengths are for shapes='enumerated' (a ranged export takes any length)")
            return self
        lengths = self.query_lengths
        if lengths is None:
            lengths = sorted({1, min(DEFAULT_QUERY_LENGTHS[1], max_context)})
        if not lengths or not all(isinstance(n, int) and not isinstance(n, bool) for n in lengths):
            raise SLMError(f"query_lengths must be integers, not {self.query_lengths!r}")
        if 1 not in lengths or max(lengths) > max_context or min(lengths) < 1:
            raise SLMError(f"query_lengths {tuple(lengths)} must include 1 (to feed any prompt length) and stay "
                           f"within max_context {max_context}")
        return CoreMLOptions(self.shapes, tuple(sorted(set(lengths))), self.logits)

    @property
    def compute_units(self) -> str:
        """The default compute units for these shapes (an MLComputeUnits case name)."""
        return COMPUTE_UNITS[self.shapes]

    def manifest(self) -> dict:
        """The manifest keys SLMKit reads to call the program and to choose its compute units."""
        return {"input_shapes": self.shapes, "query_lengths": None if self.query_lengths is None
                else list(self.query_lengths), "logits": self.logits, "compute_units": self.compute_units}
