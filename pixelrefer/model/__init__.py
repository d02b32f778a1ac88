"""The model: config, vision tower, object tokens, prompt, inference, decoding, caches, loading."""
