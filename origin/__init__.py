"""The origin: content-addressed blob storage for AT Protocol blobs."""
