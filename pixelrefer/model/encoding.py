"""Encoding: the networks that turn a `Prepared` request into the LLM's input embeddings.

The vision tower (and the projector) encode the image or the sampled frames; the tower and the object
tokenizer (SAOT for the full model, with Lite's OCI) encode each object; `Encoder.embed` splices both into
the prompt's token embeddings at the `<image>` and `<REGION>` positions, dropping the frame tokens a clip's
pruning removed. Results are keyed in a `FeatureCache` when one is given, so a chat encodes each media and
object once; with or without it the rows are the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .cache import FeatureCache
from .planning import MediaPlan, ObjectPlan, Prepared

__all__ = ["Embedded", "Encoder"]


@dataclass
class Embedded:
    """The LLM input: `inputs_embeds` (1, L, D), and the rows written at `<REGION>` positions."""

    inputs_embeds: torch.Tensor
    lm_input_ids: torch.Tensor
    region_rows: torch.Tensor


class Encoder:
    """Runs the loaded model's vision side; `dtype` is the weights' (Lite's object tokenizer autocasts)."""

    def __init__(self, model: torch.nn.Module, variant: str, dtype: torch.dtype, hidden_size: int) -> None:
        self.model = model
        self.variant = variant
        self.dtype = dtype
        self.hidden_size = hidden_size

    def embed(self, prepared: Prepared, cache: FeatureCache | None = None) -> Embedded:
        """Run the vision tower and the object tokenizer (or take their results from `cache`) and splice."""
        prompt = prepared.prompt
        ids = torch.tensor(prompt.input_ids, dtype=torch.long)
        is_media = torch.zeros(len(ids), dtype=torch.bool)
        is_media[prompt.media_positions] = True
        is_region = torch.zeros(len(ids), dtype=torch.bool)
        is_region[prompt.region_positions] = True
        media_rows = None
        if prepared.media is not None and prompt.media_positions:
            media_rows = self.encode_media(prepared.media, cache)
            if prepared.media.keep is not None:
                keep_rows = torch.ones(len(ids), dtype=torch.bool)
                keep_rows[is_media] = prepared.media.keep
                media_rows = media_rows[prepared.media.keep.to(media_rows.device)]
                ids, is_media, is_region = ids[keep_rows], is_media[keep_rows], is_region[keep_rows]
        object_rows = [self.encode_object(plan, cache) for plan in prepared.objects]
        region_rows = (
            torch.cat([object_rows[i] for i in prompt.object_order])
            if prompt.object_order
            else torch.zeros(0, self.hidden_size)
        )
        embed_tokens = self.model.model.embed_tokens
        with torch.inference_mode():
            lookup = torch.where(is_media | is_region, torch.zeros_like(ids), ids)
            embeds = embed_tokens(lookup.to(embed_tokens.weight.device)).clone()
            if media_rows is not None:
                embeds[is_media.to(embeds.device)] = media_rows.to(embeds)
            if int(is_region.sum()) != len(region_rows):
                raise RuntimeError("Internal error: object token count does not match the prompt")
            embeds[is_region.to(embeds.device)] = region_rows.to(embeds)
        return Embedded(embeds.unsqueeze(0), ids, region_rows)

    def encode_media(self, plan: MediaPlan, cache: FeatureCache | None) -> torch.Tensor:
        """The image's (or the frames') rows: the vision tower, then the projector."""
        cached = cache.get(plan.key) if cache is not None else None
        if cached is not None:
            return cached
        with torch.inference_mode():
            features = self.model.projector(self.model.vision_tower(plan.pixels))
        if cache is not None:
            cache.put(plan.key, features)
        return features

    def encode_object(self, plan: ObjectPlan, cache: FeatureCache | None) -> torch.Tensor:
        """One object's rows: its crops through the tower, pooled per cell (Lite: infused with the frame's
        local and global views), then projected."""
        cached = cache.get(plan.key) if cache is not None else None
        if cached is not None:
            return cached
        tower, tokenizer = self.model.vision_tower, self.model.object_tokenizer
        lite = self.variant == "lite"
        device = tokenizer.pos_linear.weight.device
        # As the official Lite code: the tower runs in the weights' dtype, and only the object tokenizer
        # (pooling, k-means, OCI, projection) under bfloat16 autocast.
        autocast = lite and self.dtype == torch.bfloat16
        with torch.inference_mode():
            features = tower(plan.pixels, round_to_bfloat16=lite).to(device)
            if lite:
                local = tower(plan.local_pixels, round_to_bfloat16=True).to(device)
                global_ = tower(plan.global_pixels, round_to_bfloat16=True).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                pooled = self._pool(features, plan)
                if lite:
                    n = len(pooled)
                    vectors = tokenizer.infuse(
                        torch.stack(pooled),
                        local.view(n, -1, local.shape[-1]),
                        global_.view(n, -1, global_.shape[-1]),
                    ).reshape(-1, local.shape[-1])
                else:
                    vectors = torch.cat(pooled)
                rows = tokenizer.project(vectors)
        if cache is not None:
            cache.put(plan.key, rows)
        return rows

    def _pool(self, features: torch.Tensor, plan: ObjectPlan) -> list[torch.Tensor]:
        """Each crop's tower rows pooled over its mask's cells (in the plan's permuted order)."""
        grids = plan.pixels.grid_thw.tolist()
        return [
            self.model.object_tokenizer.pool(rows.view(h, w, -1), crop, permutation)
            for rows, (_, h, w), crop, permutation in zip(
                features.split([h * w for _, h, w in grids]),
                grids,
                plan.crops,
                plan.permutations,
                strict=True,
            )
        ]

    def logits(self, embedded: Embedded) -> torch.Tensor:
        """Next-token logits at the last position from one forward pass without a cache."""
        with torch.inference_mode():
            out = self.model(inputs_embeds=embedded.inputs_embeds, use_cache=False, logits_to_keep=1)
        return out.logits[0, -1].float().cpu()
