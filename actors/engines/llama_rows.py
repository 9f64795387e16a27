"""The forward pass of a Llama-family transformers model, written out for batch invariance.

transformers' own batched decode pads every sequence's keys to the longest one and
runs the projections on however many rows are in the batch, so a request's last
bits (and sometimes its tokens) would depend on its neighbours. Here:
  * `prefill(ids)` runs one sequence alone (its shapes are its own) and returns the
    last position's logits and its keys and values per layer;
  * `decode(caches, tokens, positions)` runs one step on exactly `rows` rows
    (padding included) for the position-wise layers and attention per sequence
    over its own keys; see engines.batching for why that makes tokens independent
    of the batch;
  * `logits(ids)`: every position's logits of one sequence (verification by prefill).

It uses the model's own modules (norms, projections, MLP, rotary embedding, LM
head), so the weights and their dtype are whatever the engine loaded; eager
attention with the float32 softmax transformers uses.
"""

from __future__ import annotations

import torch


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-b, a), dim=-1)


class LlamaRows:
    def __init__(self, model, rows: int):
        cfg = model.config
        self.model, self.rows = model, int(rows)
        self.layers = model.model.layers
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.group = self.n_heads // self.n_kv
        self.scaling = self.head_dim ** -0.5

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None) -> torch.Tensor:
        """q: (heads, T, d); k, v: (kv heads, S, d) -> (T, heads * d)."""
        k = k.repeat_interleave(self.group, dim=0)
        v = v.repeat_interleave(self.group, dim=0)
        w = (q @ k.transpose(1, 2)) * self.scaling
        if mask is not None:
            w = w + mask
        w = torch.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
        return (w @ v).transpose(0, 1).reshape(q.shape[1], -1)

    def _sequence(self, ids: list[int], cache: list | None):
        m = self.model.model
        t = len(ids)
        x = m.embed_tokens(torch.tensor(ids, dtype=torch.long))  # (T, hidden)
        cos, sin = m.rotary_emb(x, torch.arange(t)[None])
        cos, sin = cos[0][None], sin[0][None]  # (1, T, d): broadcast over heads
        mask = torch.full((t, t), float("-inf"), dtype=x.dtype).triu(1)
        for layer in self.layers:
            a = layer.self_attn
            h = layer.input_layernorm(x)
            q = a.q_proj(h).view(t, self.n_heads, self.head_dim).transpose(0, 1)
            k = a.k_proj(h).view(t, self.n_kv, self.head_dim).transpose(0, 1)
            v = a.v_proj(h).view(t, self.n_kv, self.head_dim).transpose(0, 1)
            q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
            if cache is not None:
                cache.append((k, v))
            x = x + a.o_proj(self._attend(q, k, v, mask))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return m.norm(x)

    def prefill(self, ids: list[int]) -> tuple[torch.Tensor, list, torch.Tensor]:
        """(last position's logits, keys and values per layer, its final hidden state)."""
        cache: list = []
        x = self._sequence(ids, cache)
        return self.model.lm_head(x[-1:])[0], cache, x[-1]

    def logits(self, ids: list[int], with_hidden: bool = False):
        x = self._sequence(ids, None)
        return (self.model.lm_head(x), x) if with_hidden else self.model.lm_head(x)

    def decode(self, caches: list[list], tokens: list[int], positions: list[int]):
        """One step: the first len(caches) of `rows` rows are real; each cache grows by one.
        Returns (logits, final hidden states) of the real rows."""
        m, n, pad = self.model.model, len(caches), self.rows - len(caches)
        x = m.embed_tokens(torch.tensor(list(tokens) + [0] * pad, dtype=torch.long))  # (R, hidden)
        cos, sin = m.rotary_emb(x, torch.tensor(list(positions) + [0] * pad)[:, None])  # (R, 1, d)
        for li, layer in enumerate(self.layers):
            a = layer.self_attn
            h = layer.input_layernorm(x)
            q = a.q_proj(h).view(self.rows, self.n_heads, self.head_dim)
            k = a.k_proj(h).view(self.rows, self.n_kv, self.head_dim)
            v = a.v_proj(h).view(self.rows, self.n_kv, self.head_dim)
            q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
            att = torch.zeros(self.rows, self.n_heads * self.head_dim, dtype=x.dtype)
            for i, cache in enumerate(caches):
                ks, vs = cache[li]
                ks = torch.cat([ks, k[i][:, None]], dim=1)
                vs = torch.cat([vs, v[i][:, None]], dim=1)
                cache[li] = (ks, vs)
                att[i] = self._attend(q[i][:, None], ks, vs)[0]
            x = x + a.o_proj(att)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        h = m.norm(x)
        return self.model.lm_head(h)[:n], h[:n]
