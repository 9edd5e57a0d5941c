"""The S3-compatible store (docs/s3.md): the filesystem store's layout and commit protocol over a bucket."""
