"""Media in: decoding images and clips safely, sampling frames, masks and size limits."""
