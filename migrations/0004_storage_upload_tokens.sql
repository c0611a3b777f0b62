-- Signed upload URLs are single-use: the id of each token that uploaded is recorded
-- here in the transaction that writes the object (see tabula::storage), and the
-- primary key refuses a second use. Rows of tokens expired for a day are removed by
-- later uploads.

CREATE TABLE storage.upload_tokens (
    id          uuid PRIMARY KEY,
    bucket_id   text NOT NULL,
    name        text NOT NULL,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX upload_tokens_expires_at_idx ON storage.upload_tokens (expires_at);
