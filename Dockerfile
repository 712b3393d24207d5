# One image for the panel (web, panel worker, beat) and the rig agent; compose picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, so a code change does not reinstall them.
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .

# Static files are part of the image; the key only satisfies production settings and is thrown away.
RUN MORPHEUS_ENV=production \
    DJANGO_SECRET_KEY=collectstatic-only-build-key-not-used-at-runtime-0123456789abcdef \
    DJANGO_ALLOWED_HOSTS=localhost \
    python manage.py collectstatic --noinput

# The data folders exist and belong to the app user, so fresh named volumes inherit that owner.
RUN groupadd --system --gid 10001 morpheus \
    && useradd --system --uid 10001 --gid morpheus --create-home --home-dir /home/morpheus morpheus \
    && mkdir -p /app/var /var/lib/morpheus-agent \
    && chown morpheus:morpheus /app/var /var/lib/morpheus-agent
USER morpheus

EXPOSE 8000
CMD ["gunicorn", "morpheus_admin.wsgi", "--bind", "0.0.0.0:8000", "--workers", "3", "--access-logfile", "-"]
