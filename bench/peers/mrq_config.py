"""mrq configuration of the benchmark (`--config`): the raw queue of workload A-raw."""

import mrq_app

RAW_QUEUES = {
    mrq_app.RAW_QUEUE: {
        "job_factory": mrq_app.raw_job,
        "statuses_no_storage": ("started", "success"),
    },
}
