# PixelRefer region chat: the Gradio app as a container, and as a Hugging Face Docker Space (app_port 7860).
#
#   docker build -t pixelrefer-chat .
#   docker run --rm -p 7860:7860 [--gpus all] [-e HF_TOKEN=...] [-v hf-cache:/home/user/.cache/huggingface] pixelrefer-chat
#
# Python 3.11: the interpreter requirements.txt is pinned and tested with (torch==2.14.1 ships cp311 wheels;
# pyproject.toml asks for >=3.10).
FROM python:3.11-slim

# Run-time system libraries. Only libgomp1 (OpenMP, used by bitsandbytes' CPU kernels; torch carries its
# own copy). Nothing else is needed: opencv-python-headless needs no libGL/X11, imageio-ffmpeg brings a
# static ffmpeg that moviepy uses, and Pillow, numpy and torch wheels bundle their libraries.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# Spaces run containers as uid 1000; the home directory holds the Hugging Face cache, so it must be ours.
RUN useradd -m -u 1000 user
ENV HOME=/home/user \
    HF_HOME=/home/user/.cache/huggingface \
    PATH=/home/user/.local/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860
WORKDIR /home/user/app

# Dependencies first, so code changes do not reinstall them. torch==2.14.1 from PyPI is the CUDA build
# with its CUDA libraries as pip wheels: the GPU is used when the host provides one (docker run --gpus all,
# or a GPU Space) and the app falls back to the CPU otherwise; nothing extra is installed for it.
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

COPY --chown=user app.py ./
COPY --chown=user pixelrefer/ ./pixelrefer/
COPY --chown=user assets/ ./assets/
COPY --chown=user examples/ ./examples/
RUN chown user:user /home/user/app

USER user
EXPOSE 7860
CMD ["python", "app.py", "--host", "0.0.0.0", "--port", "7860"]
