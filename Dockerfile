# Cognitude proxy image. Uses real Redis/Postgres URLs (set COGNITUDE_REDIS_URL and
# COGNITUDE_POSTGRES_DSN); the embedded servers are for development.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md config.toml ./
COPY cognitude ./cognitude
COPY lua ./lua
RUN pip install --no-cache-dir -e . \
    && useradd --system --uid 10001 cognitude
USER cognitude
ENV COGNITUDE_SERVER_HOST=0.0.0.0
EXPOSE 8000
CMD ["cognitude", "serve"]
