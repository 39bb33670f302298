FROM python:3.11-slim
# espeak-ng renders text prompts (prompt=tts:...), the default TTS engine.
RUN apt-get update \
 && apt-get install -y --no-install-recommends espeak-ng \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /srv/ari-digits
COPY pyproject.toml README.md alembic.ini ./
COPY ari_app ari_app
COPY migrations migrations
COPY asterisk_conf asterisk_conf
RUN pip install --no-cache-dir .
# Migrations live next to the code (see ari_app/store/migrate.py); run from this directory.
CMD ["ari-digits", "serve"]
