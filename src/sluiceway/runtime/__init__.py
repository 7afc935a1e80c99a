"""Where throughput is won: jobs, batchers, the model cache and the dispatcher seam."""
