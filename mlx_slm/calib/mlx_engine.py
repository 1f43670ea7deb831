"""The calibration engine on MLX: mlx-lm's own decoder blocks, one at a time (MLX only).

:class:`MLXEngine` serves :func:`~.blocks.calibrate_blocks` (and what the methods and target_bpw's
sensitivity pass read of an engine: stored weights, float32 overrides, the embedding, the head) for
any model mlx-lm runs, since it calls the
model's real blocks with the masks its forward pass gives them (:mod:`.mlx_blocks`): sliding-window
layers, q/k norms, GQA and tied or untied heads need no table here. While a block runs, each of its
linear layers is a :class:`Watched` float32 twin that hands its input to ``engine.observer`` first,
and the block's other float parameters are float32: the statistics are those of a float32 pass, as
the numpy engine's are, and MLX's CPU computes float32 fast where its float16 matmul is scalar code.
Gram sums and mean squares are taken with MLX ops (:class:`MLXArrays`) on MLX's default device and
handed to the methods as numpy arrays once per block; the per-layer algorithms (GPTQ's and SparseGPT's
column sweeps, Wanda, imatrix's grid search, the refit's products, AWQ's search) run on that device too
when it is a GPU (:meth:`MLXArrays.for_methods`).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import mlx.core as mx
import numpy as np
from mlx import nn
from mlx.utils import tree_flatten, tree_unflatten

from ..errors import SLMError
from ..runtime import LazyNumpyWeights, dense_twin, quantized_modules, widen_floats
from .mlx_blocks import block_masks, blocks_of, first_block_input, head_input, tail
from .statistics import NumpyArrays

MLX_DTYPES = {"float16": mx.float16, "bfloat16": mx.bfloat16, "float32": mx.float32}
EMBEDDING = "model.embed_tokens"  # the input embedding's path in mlx-lm's layout


class MLXArrays:
    """The MLX engine's array operations (the names of :class:`~.statistics.NumpyArrays`): inputs
    are summed in float32 with MLX ops, each sum evaluated as it is added, so a block's sums never
    hold on to its activations; the per-layer algorithms build lazy MLX graphs (the column sweeps
    evaluate theirs block by block), every operation returning a new array."""

    in_cache_slices = False  # no cache-sized slices on threads: one graph per slice of rows

    @staticmethod
    def moments(x: mx.array, gram: bool):
        """(token count, sum of x**2 per column [K], sum of x x^T [K, K] or None), float32."""
        flat = x.reshape(-1, x.shape[-1]).astype(mx.float32)
        products = flat.T @ flat if gram else None
        squares = mx.diagonal(products) if gram else mx.sum(mx.square(flat), axis=0)
        mx.eval(squares, products)
        return flat.shape[0], squares, products

    @staticmethod
    def add(total: mx.array, more: mx.array) -> mx.array:
        total = total + more
        mx.eval(total)
        return total

    concatenate = staticmethod(mx.concatenate)

    @staticmethod
    def numpy(array, dtype) -> np.ndarray:
        return np.asarray(array, dtype) if isinstance(array, np.ndarray) else np.array(array).astype(dtype, copy=False)

    @staticmethod
    def for_methods():
        """The array operations the per-layer algorithms run on: MLX's when its default device is a
        GPU, else numpy's. On a GPU MLX runs them without the weights leaving the device. On MLX's CPU
        backend each op's graph and dispatch overhead is paid again for every small op (a column sweep
        is a few element-wise ops per column) and nothing is done in place, so numpy is faster there for
        every one of them (``benchmarks/layer_methods.py`` times both); on a CPU both engines then
        choose their values with the same numpy code."""
        return MLXArrays if mx.default_device() == mx.gpu else NumpyArrays

    @staticmethod
    def array(x: np.ndarray) -> mx.array:
        return mx.array(np.asarray(x, np.float32))

    where = staticmethod(mx.where)
    square = staticmethod(mx.square)
    abs = staticmethod(mx.abs)
    maximum = staticmethod(mx.maximum)
    stack = staticmethod(mx.stack)

    wide = staticmethod(float)  # a Python float: MLX computes with it in the other operand's float32

    @staticmethod
    def round_clip(x: mx.array, top: int) -> mx.array:
        return mx.clip(mx.round(x), 0, top)  # ties to even, as np.rint

    @staticmethod
    def put_where(target: mx.array, mask: mx.array, values: mx.array) -> mx.array:
        return mx.where(mask, values, target)

    @staticmethod
    def sums64(x: mx.array) -> np.ndarray:
        return np.array(x.sum(-1)).astype(np.float64)  # summed in float32: MLX's GPU has no float64

    @staticmethod
    def row_dots(a: mx.array, b: mx.array) -> mx.array:
        return (a * b).sum(-1)

    @staticmethod
    def any(mask: mx.array) -> bool:
        return mx.any(mask).item()

    @staticmethod
    def total(x: mx.array) -> float:
        return mx.sum(x).item()

    @staticmethod
    def rounded(x, dtype) -> mx.array:
        return x.astype(MLX_DTYPES[np.dtype(dtype).name]).astype(mx.float32)

    @staticmethod
    def affine_codes(groups: mx.array, bits: int, dtype):
        """``mx.quantize``'s choice (what :func:`~mlx_slm.formats.affine.quantize_codes` computes), its
        codes read back with ``mx.dequantize`` on a grid of scale 1 and bias 0."""
        group_size = groups.shape[-1]
        packed, scales, biases = mx.quantize(groups.reshape(len(groups), -1).astype(MLX_DTYPES[np.dtype(dtype).name]),
                                             group_size=group_size, bits=bits)
        unit = mx.ones(scales.shape, mx.float32)
        codes = mx.dequantize(packed, unit, mx.zeros_like(unit), group_size=group_size, bits=bits)
        return codes.reshape(groups.shape), scales.astype(mx.float32), biases.astype(mx.float32)

    @staticmethod
    def ranks(scores: mx.array) -> mx.array:
        """Rank along the last axis (0 = smallest; ties in any order): the inverse of the sorting permutation."""
        return mx.argsort(mx.argsort(scores, axis=-1), axis=-1)

    evaluate = staticmethod(mx.async_eval)


class Watched(nn.Module):
    """A linear layer computing in float32 that first hands its input to ``engine.observer``."""

    def __init__(self, layer: nn.Linear, path: str, engine):
        super().__init__()
        self.layer, self.path, self.engine = layer, path, engine

    def __call__(self, x):
        if self.engine.observer is not None:
            self.engine.observer(self.path, x)
        return self.layer(x)


class Float32Embedding(nn.Module):
    """An embedding computing in float32 with ``weight`` [vocab, D]: lookups, and as the tied head
    (``as_linear``) first handing its input to ``engine.observer``."""

    def __init__(self, weight: mx.array, path: str, engine):
        super().__init__()
        self.weight, self.path, self.engine = weight, path, engine

    def __call__(self, tokens):
        return self.weight[tokens]

    def as_linear(self, x):
        if self.engine.observer is not None:
            self.engine.observer(self.path, x)
        return x.astype(mx.float32) @ self.weight.T


def float32_linear(weight: mx.array, bias) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    layer.weight = weight.astype(mx.float32)
    if bias is not None:
        layer.bias = bias.astype(mx.float32)
    return layer


class MLXEngine:
    """Calibration statistics of an mlx-lm ``model`` (with its config dict ``config``, which the AWQ
    probe reads), block by block.

    ``weights``: parameter name -> numpy array, the model's as they were when the engine was made
    (read lazily; values assigned to it are used by the blocks from then on). ``set_dense`` gives a
    layer other float32 weights for the rest of the pass; the model itself is only changed by the
    caller storing its results. Hidden states are float32 MLX arrays [B, T, D].
    """

    backend = "mlx"
    arrays = MLXArrays

    def __init__(self, model, config: dict):
        self.model, self.config = model, config
        self.blocks = blocks_of(model)
        self.num_layers = len(self.blocks)
        modules = dict(model.named_modules())
        for layer in (0, self.num_layers - 1):
            if modules.get(f"model.layers.{layer}") is not self.blocks[layer]:
                raise SLMError("calibrating on MLX needs the decoder blocks at model.layers.<i> (mlx-lm's layout)")
        self.weights = LazyNumpyWeights(dict(tree_flatten(model.parameters())))
        self._dense = {}  # layer path -> float32 mx weight (set_dense)
        self._masks = {}  # window length -> the mask each block gets
        self._head = None
        self.observer = None

    def embed(self, tokens) -> mx.array:
        """tokens [B, T] int -> the first block's inputs [B, T, D] float32 (as the model computes them;
        from a float32 embedding holding its :meth:`set_dense` weight, where given)."""
        twin = self.swapped(EMBEDDING, self.float32_embedding(EMBEDDING)) if EMBEDDING in self._dense else nullcontext()
        with twin:
            out = first_block_input(self.model, mx.array(np.asarray(tokens, np.int32)))
            mx.eval(out)
        return out

    def masks(self, length: int) -> list:
        """The mask the model gives each block for windows of ``length`` tokens (found once per length)."""
        if length not in self._masks:
            self._masks[length] = block_masks(self.model, mx.zeros((1, length), dtype=mx.int32))
        return self._masks[length]

    def block(self, layer: int, h):
        """Decoder block ``layer`` in float32: hidden states [B, T, D] -> [B, T, D], evaluated (numpy
        in, numpy out: what the AWQ probe of :mod:`mlx_slm.quant.graph` hands it)."""
        x = mx.array(h) if isinstance(h, np.ndarray) else h
        with self.computing(layer) as block:
            out = block(x.astype(mx.float32), self.masks(x.shape[1])[layer], cache=None).astype(mx.float32)
            mx.eval(out)
        return np.array(out) if isinstance(h, np.ndarray) else out

    @contextmanager
    def computing(self, layer: int):
        """Block ``layer`` with :class:`Watched` float32 twins of its linear layers (their
        :meth:`set_dense` weights where given) and its other float parameters in float32 (values
        assigned to :attr:`weights` where given); put back as it was afterwards."""
        block, prefix = self.blocks[layer], f"model.layers.{layer}."
        saved = tree_flatten(block.parameters())
        quantized = dict(quantized_modules(block))
        linears = [(path, module) for path, module in block.named_modules()
                   if isinstance(module, nn.Linear) or path in quantized]
        twins = [(path, Watched(self.float32_layer(prefix + path, module), prefix + path, self))
                 for path, module in linears]
        block.update_modules(tree_unflatten(twins))
        widen_floats(block)
        layer_paths = {prefix + path for path, _ in linears}
        assigned = [(name[len(prefix):], mx.array(np.asarray(value, np.float32)))
                    for name, value in self.weights.assigned.items()
                    if name.startswith(prefix) and name.rsplit(".", 1)[0] not in layer_paths]
        block.update(tree_unflatten(assigned))
        try:
            yield block
        finally:
            block.update_modules(tree_unflatten(linears))
            block.update(tree_unflatten(saved))

    def float32_layer(self, path: str, module) -> nn.Linear:
        """A float32 nn.Linear computing what layer ``path`` (``module``) computes now: its
        :meth:`set_dense` weight and a bias assigned to :attr:`weights`, where given."""
        if not isinstance(module, nn.Linear):
            module = dense_twin(module)
        weight = self._dense.get(path, module.weight)
        bias = self.weights.assigned.get(f"{path}.bias")
        return float32_linear(weight, module.get("bias") if bias is None else mx.array(np.asarray(bias)))

    def dense(self, name: str) -> np.ndarray:
        """Float32 weight [N, K] of layer ``name`` as the engine computes with it."""
        if name in self._dense:
            return np.array(self._dense[name])
        return np.asarray(self.weights[f"{name}.weight"], np.float32)

    def shape(self, name: str) -> tuple[int, int]:
        """(N, K) of float layer ``name``, without converting its weight."""
        if name in self._dense:
            return tuple(self._dense[name].shape)
        return self.weights.describe(f"{name}.weight")[0]

    def set_dense(self, name: str, weight: np.ndarray) -> None:
        """Compute layer ``name`` with float32 ``weight`` [N, K] from now on; the model is unchanged."""
        self._dense[name] = mx.array(np.asarray(weight, np.float32))

    def dense_names(self) -> list[str]:
        return list(self._dense)

    def drop_cache(self, names=None) -> None:
        """Forget the :meth:`set_dense` weights of ``names`` (all by default)."""
        if names is None:
            self._dense.clear()
        for name in names or ():
            self._dense.pop(name, None)

    @property
    def tied(self) -> bool:
        """True when the head is the input embedding."""
        return self.head_name != "lm_head"

    def head(self, h):
        """Logits [B, T, vocab] float32 for last-block outputs ``h`` [B, T, D] (numpy in, numpy out), the
        head computing as a float32 twin that hands its input to ``engine.observer`` (a :class:`Watched`
        ``lm_head``, or a :class:`Float32Embedding` when tied; their :meth:`set_dense` weights where
        given) and the float parameters outside the blocks taking the values assigned to
        :attr:`weights`: what the AWQ probe of the final norm -> head group runs
        (:func:`mlx_slm.quant.graph.head_groups`) and the sensitivity pass reads."""
        model = self.model
        assigned = [(name, mx.array(np.asarray(value, np.float32))) for name, value in self.weights.assigned.items()
                    if not name.startswith(("model.layers.", "lm_head."))]
        current = dict(tree_flatten(model.parameters()))
        saved = [(name, current[name]) for name, _ in assigned]
        model.update(tree_unflatten(assigned))
        twin = (self.float32_embedding(self.head_name) if self.tied
                else Watched(self.float32_layer("lm_head", model.lm_head), "lm_head", self))
        try:
            with self.swapped(self.head_name, twin):
                out = tail(model, mx.array(h)).astype(mx.float32)
                mx.eval(out)
        finally:
            model.update(tree_unflatten(saved))
        return np.array(out)

    def float32_embedding(self, path: str) -> Float32Embedding:
        """A float32 twin of embedding ``path``: its :meth:`set_dense` weight where given."""
        weight = self._dense.get(path)
        if weight is None:
            module = dict(self.model.named_modules())[path]
            weight = (module if isinstance(module, nn.Embedding) else dense_twin(module)).weight.astype(mx.float32)
        return Float32Embedding(weight, path, self)

    @contextmanager
    def swapped(self, path: str, module):
        """The model with ``module`` at ``path`` instead of its own; put back afterwards."""
        parent_path, _, attribute = path.rpartition(".")
        parent = dict(self.model.named_modules())[parent_path] if parent_path else self.model
        original = getattr(parent, attribute)
        setattr(parent, attribute, module)
        try:
            yield module
        finally:
            setattr(parent, attribute, original)

    @property
    def head_name(self) -> str:
        """The layer mapping hidden states to logits: ``lm_head``, or the input embedding when tied."""
        if self._head is None:
            self._head = head_input(self.model, first_block_input(self.model, mx.zeros((1, 1), dtype=mx.int32)))[0]
        return self._head

    def head_input(self, h) -> mx.array:
        """What the head reads [B, T, D] float32 (the final norm's output) when the last block outputs ``h``."""
        _, x = head_input(self.model, h)
        out = x.astype(mx.float32)
        mx.eval(out)
        return out
