# syntax=docker/dockerfile:1
# The detection service on a GPU:  docker compose up --build   (see docker-compose.yml)
#
# torch's Linux wheels bundle the CUDA runtime (the nvidia-* wheels), so the image needs no CUDA base;
# the host needs the NVIDIA driver and the NVIDIA Container Toolkit, which mounts the driver in.

FROM python:3.11-slim AS build
# A compiler, in case a dependency (pycocotools) has no wheel for this platform.
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# The big layer that rarely changes first: torch and torchvision, pinned as a pair as in pyproject.toml.
RUN pip install torch==2.14.1 torchvision==0.29.1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY detector ./detector
COPY api ./api
# The project's dependencies only: the code itself runs from /app, next to its weights/ folder
# (the Predictor finds a preset's built-in weights in <repo>/weights).
RUN pip install . && pip uninstall -y detector

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 detector
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chown=detector:detector detector ./detector
COPY --chown=detector:detector api ./api
COPY --chown=detector:detector weights ./weights
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    DETECTOR_HOST=0.0.0.0 \
    DETECTOR_PORT=8000 \
    DETECTOR_DEVICE=cuda
USER detector
EXPOSE 8000
# Ready = model loaded and warmed up; loading a large model can take a minute or two.
HEALTHCHECK --interval=10s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('DETECTOR_PORT', '8000')}/readyz\", timeout=4)"]
# SIGTERM: readiness goes 503, requests in flight finish, queued ones are served, exit 0.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "api"]
