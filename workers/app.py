"""The Celery application: JSON only on the wire, late acks, one message at a time."""

from __future__ import annotations

from urllib.parse import urlsplit

from celery import Celery

from domsnap.settings import TASK_KILL_GRACE_S, VISIBILITY_TIMEOUT_S, Settings, get_settings


def make_app(settings: Settings | None = None) -> Celery:
    """The app. Its workers take messages through :mod:`workers.intake`: a message that
    is not a well-formed domsnap task for this host is rejected there (never requeued)."""
    s = settings or get_settings()
    app = Celery("domsnap", broker=s.broker_url, backend=s.result_backend_url,
                 include=["tasks.ops"])
    if urlsplit(s.broker_url).scheme == "redis":
        # kombu's Redis transport, with its envelope checked (workers.intake)
        app.conf.broker_transport = "workers.intake:RedisTransport"
    app.conf.update(
        worker_consumer="workers.intake:SafeConsumer",
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue="domsnap.unrouted",
        result_expires=s.job_ttl_s,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
        task_soft_time_limit=s.task_time_limit_s,
        task_time_limit=s.task_time_limit_s + TASK_KILL_GRACE_S,
        result_backend_transport_options={"retry_policy": {"timeout": 5.0}},
        worker_hijack_root_logger=False,
        # task events, so Flower shows domsnap's tasks (the job records stay the truth)
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_track_started=False,
    )
    return app


app = make_app()
