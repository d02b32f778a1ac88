"""Chat: the multi-turn session over a model, and warming up its next answer while the visitor marks."""
