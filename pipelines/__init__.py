"""The Ray jobs that run the `motioncrafter` library over a manifest:
manifest -> ingest -> train -> render -> evaluate -> report (see `pipelines.run`).

Only this package imports Ray; every stage calls the library for the work on one item.
"""
