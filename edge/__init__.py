"""The edge: verifying, transforming, caching delivery nodes."""
