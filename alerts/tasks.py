"""The alerts run, every MORPHEUS_ALERT_CHECK_INTERVAL seconds from beat, in the panel worker."""

from celery import shared_task

from alerts import evaluate


@shared_task(name="panel.check_alerts")
def check_alerts():
    return evaluate.run()
