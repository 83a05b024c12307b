"""Storage: the tables (:mod:`tables`), the database engine and sessions (:mod:`engine`), the
content-addressed blob store for bundles and model files (:mod:`blobs`; bundles in an S3-compatible
bucket: :mod:`s3`). Imports nothing else of
the controller."""
