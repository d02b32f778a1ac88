"""PixelRefer region chat: the model, the chat session, segmentation and video IO."""
