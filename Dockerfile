# Signoff, production shape: one image for web (gunicorn), worker and beat (Celery).
# Used by docker-compose.yml; the command decides the role.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed, unprivileged user: nothing runs as root (Celery warns when it does).
RUN groupadd --system --gid 10001 signoff \
 && useradd --system --uid 10001 --gid signoff --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin signoff

WORKDIR /app

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml changes.
# (The project's own code is not packaged, `packages = []`: `pip install .` installs the
# dependencies and the code runs from /app.)
COPY pyproject.toml README.md ./
RUN pip install ".[s3]"

COPY . .

# Static files (admin, API docs) are collected at build time and served by WhiteNoise, and
# the translations compiled (locale/*/django.po -> .mo, with msgfmt from Debian's gettext,
# removed again). SECRET_KEY here only lets settings import; it is not in the final
# environment.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gettext \
 && SECRET_KEY=collectstatic-only python manage.py compilemessages \
 && apt-get purge -y --auto-remove gettext \
 && rm -rf /var/lib/apt/lists/* \
 && SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput \
 && mkdir -p /app/var \
 && chown signoff:signoff /app/var

USER signoff

EXPOSE 8000

# The default role is web; docker-compose.yml sets the command of every service.
CMD ["gunicorn", "config.wsgi:application", "--bind", "0.0.0.0:8000", "--access-logfile", "-"]
