"""Runtime: where the model runs (devices, dtypes, placement) and where its weights come from (the hub)."""
