# watcher: `docker build -t watcher .` then
# `docker run -p 8080:8080 -v watcher-data:/data -v $PWD/config.toml:/app/config.toml:ro watcher`
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    WATCHER_API__HOST=0.0.0.0 \
    WATCHER_API__PORT=8080
# The API listens on 0.0.0.0:8080 in the container, whatever a mounted config says (the
# HEALTHCHECK and EXPOSE count on it; map it with -p). Nothing else is set from here: a
# mounted config.toml's [store] url is the one used.

WORKDIR /app
COPY pyproject.toml README.md ./
COPY watcher ./watcher
RUN pip install . && rm -rf build

COPY rules ./rules
COPY config.example.toml ./config.toml
# the image's own config keeps its SQLite store in the /data volume (the build fails if
# the example's [store] line ever changes)
RUN sed -i 's#^url = "sqlite+aiosqlite:///watcher.db"$#url = "sqlite+aiosqlite:////data/watcher.db"#' config.toml \
    && grep -q '^url = "sqlite+aiosqlite:////data/watcher.db"$' config.toml

RUN useradd --system --uid 10001 --home-dir /app watcher \
    && mkdir -p /data && chown watcher /data
USER watcher
VOLUME ["/data"]
EXPOSE 8080

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["watcher"]
CMD ["run", "-c", "/app/config.toml"]
