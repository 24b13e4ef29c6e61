"""mrq's benchmark: mrq side by side with RQ, Celery, Dramatiq, Huey and arq on one private Redis.

`python -m bench run [--quick] [--workloads A,B,...] [--systems mrq,rq,...] [--repeat N]`; see
docs/performance.md for what each workload measures and how to read the figures.
"""
