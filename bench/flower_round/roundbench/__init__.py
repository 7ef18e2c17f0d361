"""Flower apps for bench/round_latency.py: FedAvg rounds whose clients do no work."""
