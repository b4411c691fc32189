"""Latency/memory measurement, FLOP/byte counting and roofline estimates."""
