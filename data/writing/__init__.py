"""Writing shards: the sharder's plan and Ray tasks, decode/validate/resize/re-encode, tar
writing, dedup across shards and the manifest."""
