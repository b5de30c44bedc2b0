FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    DATABASE_URL=sqlite+aiosqlite:////app/data/imsvc.db

WORKDIR /app
RUN groupadd --gid 10001 imsvc && useradd --create-home --uid 10001 --gid 10001 imsvc

# Dependencies first, so that code changes reuse the cached layer.
COPY pyproject.toml README.md ./
RUN mkdir imsvc && touch imsvc/__init__.py && pip install . && pip uninstall -y imsvc && rm -rf imsvc

# The package is installed editable: the migrations stay beside it in /app, where `imsvc migrate` finds them.
COPY alembic.ini ./
COPY migrations ./migrations
COPY imsvc ./imsvc
RUN pip install --no-deps -e . && mkdir -p /app/data && chown imsvc:imsvc /app/data

USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status != 200)"]
CMD ["imsvc", "serve", "--host", "0.0.0.0", "--port", "8000"]
