FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MEDIA_DIR=/data/media \
    DATABASE_URL=sqlite:////data/comfygram.db \
    EMBEDDED_REDIS_DIR=/data/redis \
    BACKEND_HOST=0.0.0.0 \
    BACKEND_PORT=8000 \
    HEARTBEAT_FILE=/tmp/comfygram.heartbeat

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

# Each role checks itself: the worker and the bot by the heartbeat file they keep, the backend
# (no such file) by GET /healthz on its port. See `comfygram healthcheck --help`.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["comfygram", "healthcheck"]

ENTRYPOINT ["comfygram"]
CMD ["backend", "--host", "0.0.0.0"]
