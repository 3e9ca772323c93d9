"""atcdn.ingest: follow a firehose, backfill PDSes, store their blobs at an origin."""
