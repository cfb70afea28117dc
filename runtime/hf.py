"""`hf(path: "DIR")`: a pretrained transformers model from a local folder as an encoder (components/catalog.py
declares it). Imported only when a spec uses it: transformers takes a second or more to import.

The model reads token ids `x` [batch, length] (floats holding integers are rounded: mptc's data are
float tensors) with an attention mask that hides the config's `pad_token_id`, or input embeddings
[batch, length, hidden]; its last hidden state is pooled to [batch, hidden] by `pool`. Attention is the
"eager" implementation: the hypergradient differentiates the loss twice, which fused attention kernels
do not support.
"""
from __future__ import annotations

import torch
from torch import nn

from mptc.errors import RunError


class HFEncoder(nn.Module):
    """A transformers model, its inputs prepared and its output pooled (see the module's docstring).

    `forward(x, attention=None, tokens=False)` is the encoders' contract (runtime/text.py, docs/text.md):
    `attention` [batch, length, length] or [length, length], nonzero where query i may attend key j,
    replaces full attention (padding is masked either way); `tokens=True` returns the last hidden states
    [batch, length, hidden] instead of the pooled [batch, hidden]."""

    def __init__(self, model: nn.Module, pool: str, input: str):
        super().__init__()
        self.model, self.pool, self.input = model, pool, input
        self.pad = getattr(model.config, "pad_token_id", None)

    def forward(self, x: torch.Tensor, attention: torch.Tensor | None = None, tokens: bool = False) -> torch.Tensor:
        from mptc.runtime.text import attention_mask, pooled, token_ids
        dtype = next(self.model.parameters()).dtype
        if self.input == "embeds":
            keys = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
            out = self.model(inputs_embeds=x, attention_mask=attention_mask(keys, attention, dtype))
        else:
            ids = token_ids(x)
            keys = ids != self.pad if self.pad is not None else torch.ones_like(ids, dtype=torch.bool)
            out = self.model(input_ids=ids, attention_mask=attention_mask(keys, attention, dtype))
        if tokens:
            return out.last_hidden_state
        if self.pool == "pooler":
            if getattr(out, "pooler_output", None) is None:
                raise RunError(f"hf: {type(self.model).__name__} has no pooler; use pool: first or pool: mean")
            return out.pooler_output
        return pooled(out.last_hidden_state, keys, self.pool)


def hf(path: str, pool: str = "mean", input: str = "ids") -> HFEncoder:
    """The model saved in `path` (local files only), in train mode, pooled by `pool`."""
    try:
        import transformers
    except ImportError:
        raise RunError("hf(...) needs the transformers package: pip install transformers") from None
    from transformers.utils import logging
    logging.disable_progress_bar()            # mptc has its own progress bar; the run's output stays readable
    try:
        model = transformers.AutoModel.from_pretrained(path, local_files_only=True, attn_implementation="eager")
    except Exception as e:  # noqa: BLE001 (a damaged, foreign or hostile folder: named, never a traceback)
        raise RunError(f"hf: cannot load a model from {path}: {_reason(e)}") from None
    model.train()
    return HFEncoder(model, pool, input)


def _reason(e: Exception) -> str:
    """Why loading failed, in one line; a pickle torch's weights-only loader refused is said to be refused
    (not torch's advice to load it unsafely)."""
    import pickle
    if isinstance(e, pickle.UnpicklingError) or "weights_only" in str(e):
        return "its weights file holds objects other than tensors, which mptc never unpickles"
    if "ignore_mismatched_sizes" in str(e):
        return "a weight in its weights file has another shape than its config.json describes"
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0][:300] if lines else ''}"
