"""Where artifacts live: fingerprints, manifests, the data root, the object store."""
