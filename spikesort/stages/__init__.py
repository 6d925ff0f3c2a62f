"""The sorting stages, in pipeline order: preprocess, drift, detect, cluster, match, curate, export.

Each module holds pure functions on arrays with keyword-only parameters; the orchestrator in
:mod:`spikesort.pipeline` calls them in order.
"""
