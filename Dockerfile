FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MEDIA_DIR=/data/media \
    DATABASE_URL=sqlite:////data/comfygram.db \
    EMBEDDED_REDIS_DIR=/data/redis \
    BACKEND_HOST=0.0.0.0 \
    BACKEND_PORT=8000

RUN useradd --create-home --uid 1000 comfygram \
    && mkdir -p /data/media /app \
    && chown -R comfygram:comfygram /data /app

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src/ ./src/
RUN pip install . && rm -rf /app/src

USER comfygram
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["comfygram"]
CMD ["backend", "--host", "0.0.0.0"]
