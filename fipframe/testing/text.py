"""A tiny text classifier that takes ``input_ids`` and ``attention_mask``, and token tasks for it.

For tests and examples of named inputs: the padding of :func:`token_tasks` is random tokens,
not a pad id, so a model that ignores ``attention_mask`` reads noise and computes something
else. Real text models (BERT, MiniLM) come through the transformers plugin.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TinyTextClassifier(nn.Module):
    """Embedding, one masked self-attention block, masked mean pooling, a linear head.

    ``forward(input_ids [N, L], attention_mask [N, L] of 0/1 or None) -> logits [N, classes]``;
    without a mask every position counts.
    """

    def __init__(
        self, vocab: int, classes: int, *, dim: int = 16, heads: int = 2, max_len: int = 16
    ):
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(max_len, dim))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, classes)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        n, length = input_ids.shape
        h = self.embed(input_ids) + self.pos[:length]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        keep = attention_mask.to(torch.bool)
        q, k, v = self.qkv(h).view(n, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        h = self.norm(h + self.out(a.transpose(1, 2).reshape(n, length, -1)))
        h = h + self.mlp(h)
        w = keep.to(h.dtype)[..., None]
        return self.head((h * w).sum(1) / w.sum(1).clamp_min(1.0))


def token_tasks(
    n_tasks: int = 2,
    *,
    train: int = 512,
    test: int = 256,
    length: int = 12,
    words: int = 8,
    seed: int = 0,
) -> list[tuple[dict[str, Tensor], Tensor, dict[str, Tensor], Tensor]]:
    """Per-task ``(x_train, y_train, x_test, y_test)``, ``x`` = ``{input_ids, attention_mask}``.

    Task ``t`` uses its own ``2 * words`` token ids and classes ``2t`` and ``2t + 1``: the class
    says which half of the task's tokens is the majority among the first ``m`` positions, with
    ``m`` drawn per sequence from 3 to ``length``. Positions past ``m`` (masked) hold random
    tokens of the other half, so reading them flips the majority.
    """
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in range(n_tasks):
        parts = []
        for n in (train, test):
            base = t * 2 * words
            y = torch.randint(0, 2, (n,), generator=g)
            m = torch.randint(3, length + 1, (n,), generator=g)
            pos = torch.arange(length)[None, :]
            mask = (pos < m[:, None]).long()
            # valid positions: 3/4 from the labelled half, 1/4 from the other
            major = torch.rand(n, length, generator=g) < 0.75
            half = torch.where(major, y[:, None], 1 - y[:, None])
            half = torch.where(mask.bool(), half, 1 - y[:, None])  # padding: the other half
            ids = base + half * words + torch.randint(0, words, (n, length), generator=g)
            parts.append(({"input_ids": ids, "attention_mask": mask}, y + 2 * t))
        out.append((parts[0][0], parts[0][1], parts[1][0], parts[1][1]))
    return out
