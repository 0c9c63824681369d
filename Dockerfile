# palmloop application image: web, worker and beat run from it with different commands.
FROM python:3.11-slim-bookworm
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends curl g++ && rm -rf /var/lib/apt/lists/*
# The CPU build of torch; a GPU image swaps this index for a CUDA one.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md ./
COPY webapp webapp
COPY feedback feedback
COPY model_runtime model_runtime
COPY templates templates
COPY models/base models/base
COPY manage.py Procfile ./
RUN pip install . && DEBUG=1 python manage.py collectstatic --noinput
RUN useradd --create-home palmloop && mkdir -p /app/var /models && chown -R palmloop /app/var /models
USER palmloop
# palmloop's CPU kernels (model_runtime/csrc), compiled once into ~/.cache/torch_extensions.
RUN python -m model_runtime build-kernels
EXPOSE 8000
CMD ["uvicorn", "webapp.asgi:application", "--host", "0.0.0.0", "--port", "8000"]
