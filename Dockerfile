# Multi-stage image for the API and the flusher (same image, different command).
FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /venv
COPY pyproject.toml ./
COPY app ./app
RUN /venv/bin/pip install --no-cache-dir .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home /srv referral
COPY --from=build /venv /venv
COPY migrations /srv/migrations
COPY app /srv/app
WORKDIR /srv
ENV PATH=/venv/bin:$PATH PYTHONUNBUFFERED=1 SPOOL_DIR=/srv/spool
RUN mkdir -p /srv/spool && chown referral /srv/spool
USER referral
EXPOSE 8000
CMD ["referral", "serve", "--host", "0.0.0.0", "--port", "8000"]
