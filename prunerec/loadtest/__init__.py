"""`prunerec loadtest`: drive two served models (baseline, candidate) with the same real request
load in turn, and compare throughput, latency and token rate. See docs/loadtest.md."""
