"""The test-time mixture: experts that predict beside the network (caches, n-grams, adaptation)."""
