"""Reading sources: listing folders, S3 prefixes and demo sets, planning manifests by ranges, and
reading each record's bytes (files, S3, HTTP) bounded in time and size."""
