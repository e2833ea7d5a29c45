"""The head layout: which numbers of a layer belong to attention head h. Every backend calls these functions.

The attention output projection (o_proj) of a layer takes the concatenated per-head outputs,
[..., num_heads * head_dim], and head h owns input features h*head_dim : (h+1)*head_dim. Scaling head h by
s_h is therefore the same as

  * multiplying those input features by s_h (hooks: `scale_input`, `RowScale` for per-row scales), or
  * multiplying the o_proj weight's entries that read them (fold: `folded_weight`, `fold_in_place`):
    COLUMNS of an nn.Linear weight [out, in] (layout "linear"), ROWS of a GPT-2 Conv1D weight [in, out]
    (layout "conv1d"), or
  * adding the low-rank difference W diag(s) - W (LoRA: `lora_factors`).

The weight-side functions multiply in float32 and round once to the weight's dtype, so every fold (in
transformers, in vLLM's weight stream, in an exported checkpoint) gives the same bits; the property test
in tests/test_head_layout.py holds hooks == fold == vLLM stream fold == base + LoRA on every tiny model.
"""

from __future__ import annotations

import torch

LAYOUTS = ("linear", "conv1d")


def head_features(head: int, head_dim: int) -> slice:
    """The o_proj input features of `head`."""
    return slice(head * head_dim, (head + 1) * head_dim)


def feature_scales(row: torch.Tensor, head_dim: int) -> torch.Tensor:
    """[..., num_heads] -> [..., num_heads * head_dim]: each head's scale repeated over its features."""
    return row.repeat_interleave(head_dim, dim=-1)


def in_dim(layout: str) -> int:
    """The weight dimension that indexes o_proj input features: 1 for Linear [out, in], 0 for Conv1D [in, out]."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown weight layout {layout!r}; expected one of {LAYOUTS}")
    return 1 if layout == "linear" else 0


def head_block(weight: torch.Tensor, head: int, head_dim: int, layout: str) -> torch.Tensor:
    """View of the weight entries that multiply head `head`'s features."""
    sl = head_features(head, head_dim)
    return weight[:, sl] if in_dim(layout) == 1 else weight[sl, :]


# ---------------------------------------------------------------------------------------------- activations
def scale_input(x: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x [..., num_heads * head_dim] times per-feature scales (from `feature_scales`), in x's dtype."""
    return x * scales


class RowScale(torch.autograd.Function):
    """y[b, p, f] = x[b, p, f] * s[b, f]: a per-row (per-text) scale of every head's features.

    Forward multiplies in x's dtype (s = 1 gives x bit for bit). Backward returns d/ds in float32 without
    keeping a float32 copy of x alive: the reduction over positions runs in float32 chunk by chunk, so a
    bf16 model's gradients are the float32 sums the reference's float32 scales would see.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        # x: [batch, pos, heads * head_dim] (model dtype); s: [batch, heads * head_dim] (float32)
        ctx.save_for_backward(x, s)
        return x * s.to(x.dtype)[:, None, :]

    @staticmethod
    def backward(ctx, grad):
        x, s = ctx.saved_tensors
        grad_x = grad * s.to(grad.dtype)[:, None, :] if ctx.needs_input_grad[0] else None
        grad_s = None
        if ctx.needs_input_grad[1]:
            grad_s = torch.zeros(s.shape, dtype=torch.float32, device=x.device)
            step = max(1, (1 << 22) // max(1, x.shape[0] * x.shape[2]))  # ~4M float32 elements per chunk
            for p in range(0, x.shape[1], step):
                grad_s += (grad[:, p:p + step].float() * x[:, p:p + step].float()).sum(1)
            grad_s = grad_s.to(s.dtype)
        return grad_x, grad_s


class CompiledRowScale(RowScale):
    """RowScale for torch.compile'd layers: the same forward; backward reduces the float32 products over positions
    in one expression, which the compiler fuses into one kernel (no float32 copy of x is materialised).
    RowScale's chunk loop would pin each sequence length into the compiled graph."""

    @staticmethod
    def backward(ctx, grad):
        x, s = ctx.saved_tensors
        return grad * s.to(grad.dtype)[:, None, :], (grad.float() * x.float()).sum(1).to(s.dtype)


def scale_rows(x: torch.Tensor, row_scales: torch.Tensor, head_dim: int,
               function: type[RowScale] = RowScale) -> torch.Tensor:
    """x [batch, pos, heads * head_dim] times row_scales [batch, heads] (row b of the batch by its own scales);
    `function` CompiledRowScale inside torch.compile'd layers."""
    return function.apply(x, feature_scales(row_scales.to(x.device), head_dim))


# ---------------------------------------------------------------------------------------------- weights
def _scaled(block: torch.Tensor, scale) -> torch.Tensor:
    # float32 product rounded once: bf16/fp16 weights lose no more than one rounding
    out = (block.float() * scale).to(block.dtype)
    if not bool(torch.isfinite(out).all()) and bool(torch.isfinite(block).all()):
        from .errors import LahisError

        biggest = float((block.float().abs() * (scale.abs() if torch.is_tensor(scale) else abs(scale))).max())
        raise LahisError(f"folding the head mask overflows {str(block.dtype).replace('torch.', '')}: a scaled weight "
                         f"reaches {biggest:.3g}, above its largest value {torch.finfo(block.dtype).max:.3g}; use a "
                         "smaller scale or a wider dtype (--dtype float32 or bfloat16)")
    return out


def folded_weight(weight: torch.Tensor, row: torch.Tensor, head_dim: int, layout: str) -> torch.Tensor:
    """W diag(s) as a new tensor: `weight` with each head's entries multiplied by row[head]."""
    scales = feature_scales(row.float(), head_dim).to(weight.device)
    shape = (1, -1) if in_dim(layout) == 1 else (-1, 1)
    return _scaled(weight, scales.view(shape))


def fold_in_place(weight: torch.Tensor, row: torch.Tensor, head_dim: int, layout: str) \
        -> list[tuple[int, torch.Tensor]]:
    """Multiply the changed heads' entries of `weight` by their scales in place; return [(head, original block)]
    so `unfold_in_place` restores them exactly (a copy, never a division)."""
    saved = []
    with torch.no_grad():
        for head in (row != 1).nonzero().flatten().tolist():
            block = head_block(weight, head, head_dim, layout)
            saved.append((head, block.clone()))
            block.copy_(_scaled(block, float(row[head])))
    return saved


def unfold_in_place(weight: torch.Tensor, saved: list[tuple[int, torch.Tensor]], head_dim: int, layout: str) -> None:
    with torch.no_grad():
        for head, original in reversed(saved):
            head_block(weight, head, head_dim, layout).copy_(original)


def lora_factors(weight: torch.Tensor, row: torch.Tensor, head_dim: int, layout: str, r: int,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(lora_A [r, in_features], lora_B [out_features, r]) with B @ A = W diag(s) - W for one layer.

    Only the changed heads' columns differ: W diag(s) - W = W[:, cols] diag(s_cols - 1) S, where S [k, in]
    selects the changed features (one 1 per row), so A = S and B = W[:, cols] diag(s_cols - 1), rank
    k = changed heads x head_dim, padded with zeros to `r` (which adds exactly nothing).
    """
    heads = (row != 1).nonzero().flatten().tolist()
    cols = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads])  # [k], in head order
    w = weight.detach().float()
    w_oi = w if in_dim(layout) == 1 else w.t()  # [out, in] whatever the module's storage layout
    out_features, in_features = w_oi.shape
    k = cols.numel()
    if k > r:
        raise ValueError(f"a LoRA rank of {r} cannot hold {k} changed features")
    a = torch.zeros(r, in_features)
    a[torch.arange(k), cols] = 1.0
    b = torch.zeros(out_features, r)
    delta = (row[heads].float() - 1.0).repeat_interleave(head_dim)  # [k]: s_cols - 1
    b[:, :k] = w_oi[:, cols] * delta  # a -1 scale (a zeroed head) gives exactly -W[:, cols]
    return a.to(dtype).contiguous(), b.to(dtype).contiguous()
