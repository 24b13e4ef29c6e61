"""mrq configuration: every setting, with its default.

Copy this file to `mrq-config.py` in the directory you start mrq commands from (or point to it with
`--config PATH` / `MRQ_CONFIG`) and keep the lines you change. Precedence, highest first: the command
line (`--greenlets 20`), `MRQ_*` environment variables (`MRQ_GREENLETS=20`), this file, the defaults.
docs/configuration.md has the same reference with each flag and variable name.

Uppercase names that are not settings are kept too, and tasks read them with
`get_current_config()["my_key"]` (MRQ 0.9 configs keep working). This file is Python: compute values,
import helpers, define hooks.
"""

import datetime

# --- Connections -------------------------------------------------------------------------------------
# Redis URI: redis://, rediss:// (TLS), unix://, redis+sentinel://host:port[,host:port]/service[/db],
# redis+cluster://host:port (docs/deployment.md).
REDIS = "redis://127.0.0.1:6379/0"
REDIS_PREFIX = "mrq"  # namespace of every Redis key and channel mrq uses
REDIS_MAX_CONNECTIONS = 100  # size of the Redis connection pool per process
REDIS_TIMEOUT = 10.0  # seconds before a Redis connect or command gives up
# MongoDB URI of the jobs database (the database named in the path; `mrq` if none). Replica set:
# "mongodb://db1,db2,db3/mrq?replicaSet=rs0".
MONGODB_JOBS = "mongodb://127.0.0.1:27017/mrq"
MONGODB_LOGS = "1"  # per-job logs: "1" = the jobs database, "0" = not stored, or another MongoDB URI
MONGODB_LOGS_SIZE = 0  # bytes: make mrq_logs a capped collection (0 = not capped; a TTL cleans it)
MONGODB_TIMEOUT = 5.0  # seconds before a MongoDB server selection or connect gives up

# --- Identity and logging ------------------------------------------------------------------------------
NAME = ""  # worker name shown in reports ("" = <hostname>.<pid>)
LOG_LEVEL = "INFO"  # DEBUG, INFO, WARNING, ERROR or CRITICAL
LOG_FORMAT = "text"  # "text" for people, "json" (one object per line) for log pipelines
LOG_HANDLERS = {}  # MRQ's extra handlers of the job logger: {"logging.FileHandler": {"filename": "jobs.log"}}
LOG_LEVELS = []  # levels of single loggers, e.g. ["mrq.worker=DEBUG", "mrq.scheduler=WARNING"]
QUIET = False  # do not echo per-job logs to the worker's output

# --- Job defaults (each can be set per task in TASKS) -------------------------------------------------
DEFAULT_JOB_TIMEOUT = 3600.0  # seconds a job may run before it is stopped with status `timeout`
DEFAULT_JOB_RESULT_TTL = 7 * 24 * 3600  # seconds a successful job is kept
DEFAULT_JOB_ABORT_TTL = 24 * 3600  # seconds an aborted job is kept
DEFAULT_JOB_CANCEL_TTL = 24 * 3600  # seconds a cancelled job is kept
DEFAULT_JOB_TTL = 180 * 24 * 3600  # seconds a job in any other final status (failed, timeout...) is kept
DEFAULT_JOB_MAX_RETRIES = 3  # retries allowed by retry_current_job() by default
DEFAULT_JOB_RETRY_DELAY = 3.0  # seconds before a retried job runs again by default
RETRY_ON_CONNECTION_ERRORS = True  # a task failing on a Redis/MongoDB connection error is retried (backoff)

# --- Worker (mrq-worker) -------------------------------------------------------------------------------
QUEUES = ["default"]  # queues to listen on, highest priority first; "crawl/" takes every crawl/... subqueue
GREENLETS = 1  # jobs run at once by one worker process
PROCESSES = 0  # run this many worker processes under supervisord (0 = this process is the worker)
MAX_JOBS = 0  # exit cleanly after this many jobs (0 = no limit)
MAX_TIME = 0.0  # exit cleanly after this many seconds (0 = no limit)
MAX_MEMORY = 0  # exit cleanly once the process uses more than this many MB (0 = no limit)
DEQUEUE_STRATEGY = "sequential"  # "sequential" (strict priority), "parallel" (round-robin) or "burst"
REPORT_INTERVAL = 5.0  # seconds between worker reports in mrq_workers
WORKER_LEASE = 15.0  # seconds without renewal after which a worker counts as dead and its jobs are recovered
FORGET_SUBQUEUES_AFTER = 86400.0  # seconds after which an empty, unused subqueue leaves the known queues (min 300)
MAX_RECOVERIES = 3  # recoveries of a job from crashed workers before it fails as a poison job
TASK_WHITELIST = []  # task paths this worker runs, alone (MRQ's --task_whitelist a,b); other jobs stay queued
TASK_BLACKLIST = []  # task paths this worker never runs; their jobs stay queued for other workers
SCHEDULER = False  # also run the scheduler (SCHEDULER_TASKS) in this worker
SCHEDULER_INTERVAL = 1.0  # seconds between scheduler checks
ENSURE_INDEXES = False  # create the MongoDB indexes at start
ADMIN_PORT = 0  # port of the admin HTTP server: /report, /metrics, /wait_for_idle (0 = off)
ADMIN_IP = "127.0.0.1"  # address the admin server binds to ("0.0.0.0" in a container or a pod)
ADMIN_TOKEN = ""  # bearer token every admin request must send: set it whenever ADMIN_IP is not loopback

# --- Tracing and profiling (mrq-worker, docs/observability.md) ----------------------------------------
TRACE_GREENLETS = False  # time and greenlet switches of each job
TRACE_IO = False  # each Redis, MongoDB and HTTP call of a job, with its duration
TRACE_MEMORY = False  # memory growth per job, with objgraph type counts (needs GREENLETS = 1)
TRACE_MEMORY_TYPE = ""  # with TRACE_MEMORY: draw the references to an object of this type (needs graphviz)
TRACE_MEMORY_OUTPUT_DIR = "memory_traces"  # where TRACE_MEMORY_TYPE writes its graphs
PROFILE = False  # cProfile each job (with GREENLETS = 1) or else the whole worker
ADD_NETWORK_LATENCY = 0.0  # a random delay of up to this many seconds before every network call (rehearsals)

# --- Dashboard (mrq-dashboard) --------------------------------------------------------------------------
DASHBOARD_PORT = 5555  # port the dashboard listens on
DASHBOARD_BIND = "127.0.0.1"  # address it binds to; anything but loopback should have auth
DASHBOARD_AUTH = ""  # "user:password" for HTTP basic auth on every page and API route ("" = none)
DASHBOARD_TOKEN = ""  # bearer token for API clients (Authorization: Bearer <token>)
DASHBOARD_READONLY = False  # refuse every action (cancel, requeue, abort, pause, enqueue)
DASHBOARD_ENQUEUE_PATHS = []  # task paths (exact, or "tasks.public.*" patterns) POST /api/jobs may enqueue ([] = none)

# --- mrq-run ---------------------------------------------------------------------------------------------
QUEUE = ""  # mrq-run: queue the task on this queue and print its id instead of running it

# --- Per-task settings -----------------------------------------------------------------------------------
# Keyed by task path or dotted prefix (the longest match wins): queue (where queue_job puts it by
# default), timeout, result_ttl, abort_ttl, cancel_ttl, default_ttl, max_retries, retry_delay,
# max_concurrency (at most that many running at once across all workers).
TASKS = {
    "mrq.basetasks": {"queue": "maintenance"},  # the maintenance tasks below, for a small worker of their own
    # "tasks.crawl": {"queue": "crawl", "timeout": 60, "max_retries": 5, "retry_delay": 30},
    # "tasks.crawl.Render": {"timeout": 600, "max_concurrency": 4},
    # "tasks.reports": {"queue": "reports", "result_ttl": 30 * 24 * 3600},
}

# --- Scheduled tasks (workers started with --scheduler; docs/scheduler.md) -------------------------------
# One schedule form per entry: interval (seconds), dailytime (UTC) with an optional weekday
# (0 = Monday) or monthday, or cron. Each occurrence is queued once, however many schedulers run.
SCHEDULER_TASKS = [
    # mrq's safety nets (docs/guarantees.md): cheap, idempotent, worth running everywhere.
    {"path": "mrq.basetasks.cleaning.RequeueLostJobs", "params": {}, "interval": 300},
    {"path": "mrq.basetasks.cleaning.RequeueStartedJobs", "params": {"timeout": 300}, "interval": 300},
    {"path": "mrq.basetasks.cleaning.RequeueInterruptedJobs", "params": {}, "interval": 300},
    {"path": "mrq.basetasks.cleaning.RequeueRetryJobs", "params": {}, "interval": 60},
    {"path": "mrq.basetasks.indexes.EnsureIndexes", "params": {}, "dailytime": datetime.time(4, 0)},
    # {"path": "tasks.reports.Daily", "params": {}, "dailytime": datetime.time(3, 30), "queue": "reports"},
    # {"path": "tasks.reports.Weekly", "params": {}, "weekday": 0, "dailytime": "09:00"},
    # {"path": "tasks.billing.Invoice", "params": {"kind": "monthly"}, "monthday": 1, "dailytime": "00:00"},
    # {"path": "tasks.sync.Pull", "params": {}, "cron": "*/15 9-17 * * 1-5"},
]

# --- Raw queues (docs/queues.md) ---------------------------------------------------------------------------
# Queues named *_raw, *_set, *_sorted_set or *_timed_set keep only parameters in Redis; job_factory
# turns one into a job when a worker takes it. retry_queue (a regular queue) is where retries go and
# where the job is shown; statuses_no_storage skips MongoDB for those statuses (failures are stored).
RAW_QUEUES = {
    "crawl_raw": {
        "job_factory": lambda rawparam: {"path": "tasks.crawl.Fetch", "params": {"url": rawparam}},
        "retry_queue": "crawl_retries",
    },
    "crawl_timed_set": {
        "job_factory": lambda rawparam: {"path": "tasks.crawl.Fetch", "params": {"url": rawparam}},
        "retry_queue": "crawl_retries",
        "statuses_no_storage": ("started", "success"),
    },
}


# --- Metrics -------------------------------------------------------------------------------------------------
def send_to_statsd(name, incr=1, **kwargs):
    """A METRIC_HOOK: called with MRQ's metric names (jobs.status.<status>, queues.<queue>.dequeued,
    queues.all.dequeued, queues.<queue>.enqueued...). Prometheus metrics need no hook: /metrics
    on the worker's admin port (docs/observability.md)."""
    # statsd_client.incr(f"mrq.{name}", incr)


METRIC_HOOK = None  # fn(name, incr=1, **kwargs) called for each metric, e.g. METRIC_HOOK = send_to_statsd
