# The Quiver hub. Build: docker build -t quiver-hub .   Run: see docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    QUIVER_HOME=/data QUIVER_HOST=0.0.0.0 QUIVER_PORT=8000

WORKDIR /app
# torch first and pinned to the CPU build, so pip does not pull the CUDA packages.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md ./
COPY hub ./hub
COPY registry ./registry
COPY client ./client
COPY migrations ./migrations
RUN pip install '.[server]'

RUN useradd --create-home --uid 1000 quiver && mkdir -p /data && chown quiver /data
USER quiver
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=5 \
    CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/readyz')" || exit 1
CMD ["quiver", "serve"]
