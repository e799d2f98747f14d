"""The `prunerec serve` options a load test passes to both servers it starts, in that order
(`prunerec loadtest` declares them, LoadtestOptions.serve_args passes them); no heavy imports, so
the command line loads without the runner."""
SHARED_SERVE_OPTIONS = ["beams", "max_concurrency", "max_queue", "max_batch", "request_timeout", "processes",
                        "enforce_eager"]
