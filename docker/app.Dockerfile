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
# A plain (non-editable) install: the wheel carries the migrations (ari_app/migrations), so
# `serve` migrates from any directory. tests/test_wheel.py runs these steps outside Docker.
RUN pip install --no-cache-dir .
CMD ["ari-digits", "serve"]
