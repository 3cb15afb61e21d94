"""Multi-process tests: several ranks launched with ``torch.distributed.run`` (CPU, gloo)."""
