"""A whole training step (forward, backward, optimizer step) captured in one CUDA graph.

At 7B scale with batch 1 x 512 a QLoRA step launches thousands of kernels, most of them
small (norms, rotary, casts, the two LoRA matmuls of every adapted Linear, Adam's
updates), and the GPU sits idle while the CPU launches them. :class:`CapturedTrainStep`
records the step once in a ``torch.cuda.CUDAGraph`` and afterwards replays it: one launch
per step, the same kernels on the same addresses, so the same numbers as the eager step.

How it is used::

    opt = torch.optim.AdamW(params, lr=1e-4, capturable=True)
    step = CapturedTrainStep(model, opt, lambda m, x, y: m(x, y), warmup=2)
    for x, y in batches:          # every batch of one shape (the graph's static shape)
        loss = step(x, y)         # a 0-d tensor, overwritten by the next step: .item() it

Choices worth knowing:

- The first ``warmup`` calls are ordinary eager steps, run on a side stream as CUDA graph
  capture wants (they also create the optimizer state, which capture cannot); the capture
  runs on that same stream (:func:`side_stream`), so the step's matmuls use one cuBLAS
  workspace, as the eager step does. The next
  call copies its batch into static input buffers, captures the step and replays it;
  every later call copies its batch into those buffers and replays. Each call is one real
  training step: N calls give the same parameters as N eager steps.
- Gradients are set to None once before the capture; the captured backward then creates
  them in the graph's memory pool, and every replay writes them afresh (no zero_grad is
  needed or allowed after capture). The optimizer must be capturable (``capturable=True``
  for Adam and AdamW: step counts live on the GPU).
- Memory: the capture allocates from a private pool in which tensors freed during the
  step (activations, recomputed layers under checkpointing) are reused later in the same
  step, so the peak matches the eager step's. The pool is held until the object is freed.
- Autocast runs with ``cache_enabled=False`` (a cast cached across the capture would point
  at memory the graph does not own); the casts happen inside the graph instead.
- Randomness: nothing in the step may draw random numbers through a CUDA generator
  unless the generator is registered with the graph; LlamaQLoRA's checkpointing only saves
  RNG state when a layer has dropout (see ``minituner.scale.llama``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


_SIDE_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def side_stream(device: torch.device) -> torch.cuda.Stream:
    """One side stream per device for warm-up and capture, shared by every captured step:
    cuBLAS keeps a workspace per stream for the life of the process, so a new stream for
    each step would leave one more workspace allocated each time."""
    device = torch.device(device)
    if device not in _SIDE_STREAMS:
        _SIDE_STREAMS[device] = torch.cuda.Stream(device)
    return _SIDE_STREAMS[device]


def optimizer_is_capturable(optimizer: torch.optim.Optimizer) -> bool:
    """True when every param group of ``optimizer`` can run inside a CUDA graph.

    Optimizers with a ``capturable`` option (Adam, AdamW, ...) need it set; the others
    (plain SGD, whose step reads nothing from the host) are taken as they are.
    """
    if "capturable" not in optimizer.defaults:
        return True
    return all(bool(g.get("capturable", False)) for g in optimizer.param_groups)


class CapturedTrainStep:
    """One training step of ``model`` on batches (x, y) of one shape, replayed from a graph.

    Args:
        model: on a CUDA device; its trainable parameters are ``optimizer``'s.
        optimizer: capturable (:func:`optimizer_is_capturable`).
        loss_fn: ``loss_fn(model, x, y)`` -> scalar loss tensor.
        warmup: eager steps before the capture, >= 1 (the first creates optimizer state).
        autocast_dtype: run the forward under ``torch.autocast("cuda", dtype)``; None: no
            autocast.

    Raises:
        ValueError: the optimizer is not capturable, ``warmup`` < 1, an optimized
            parameter is not on a CUDA device, or (on a call after the capture) a batch
            whose shape, dtype or device differs from the captured one.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFn,
        warmup: int = 2,
        autocast_dtype: torch.dtype | None = torch.bfloat16,
    ):
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if not optimizer_is_capturable(optimizer):
            raise ValueError(
                f"{type(optimizer).__name__} is not capturable: build it with capturable=True"
            )
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"warmup must be a whole number >= 1, got {warmup!r}")
        if not params or any(not p.is_cuda for p in params):
            raise ValueError("CapturedTrainStep needs every optimized parameter on a CUDA device")
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.warmup, self.autocast_dtype = warmup, autocast_dtype
        self.device = params[0].device
        self.steps = 0  # training steps taken through this object
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_x = self.static_y = self.static_loss = None
        self._side = side_stream(self.device)

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def _autocast(self):
        return torch.autocast(
            "cuda",
            dtype=self.autocast_dtype or torch.bfloat16,
            enabled=self.autocast_dtype is not None,
            cache_enabled=False,
        )

    def _forward_backward_update(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            loss = self.loss_fn(self.model, x, y)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def _eager(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._side):
            self.optimizer.zero_grad(set_to_none=True)
            loss = self._forward_backward_update(x, y)
        torch.cuda.current_stream(self.device).wait_stream(self._side)
        return loss

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.static_x, self.static_y = x.clone(), y.clone()
        self.optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self._side):
            self.static_loss = self._forward_backward_update(self.static_x, self.static_y)
        self.graph = graph

    def _check(self, x: torch.Tensor, y: torch.Tensor) -> None:
        for name, got, want in (("x", x, self.static_x), ("y", y, self.static_y)):
            if (got.shape, got.dtype, got.device) != (want.shape, want.dtype, want.device):
                raise ValueError(
                    f"{name} is {tuple(got.shape)} {got.dtype} on {got.device}; the captured "
                    f"step takes {tuple(want.shape)} {want.dtype} on {want.device}"
                )

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One training step on (x, y); returns the loss (0-d, detached).

        After the capture the returned tensor is the graph's output buffer: the next call
        overwrites it, so read it (``.item()``) or clone it before then.
        """
        if self.graph is None and self.steps < self.warmup:
            loss = self._eager(x, y)
        else:
            if self.graph is None:
                self._capture(x, y)
            else:
                self._check(x, y)
                self.static_x.copy_(x, non_blocking=True)
                self.static_y.copy_(y, non_blocking=True)
            self.graph.replay()
            loss = self.static_loss
        self.steps += 1
        return loss
