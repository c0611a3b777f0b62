-- Tabula's built-in track, 2: the storage service's metadata — buckets, objects and
-- the single-use upload tokens. Bytes live in the object store; a row here is written
-- in the same transaction that makes the bytes visible (see tabula::storage).
-- Idempotent, like every built-in migration.

CREATE SCHEMA IF NOT EXISTS storage;

CREATE OR REPLACE FUNCTION storage.touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TABLE IF NOT EXISTS storage.buckets (
    id                  text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9._-]{0,62}$'),
    public              boolean NOT NULL DEFAULT false,
    file_size_limit     bigint CHECK (file_size_limit IS NULL OR file_size_limit > 0),
    allowed_mime_types  jsonb,
    created_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS storage.objects (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    bucket_id       text NOT NULL REFERENCES storage.buckets (id) ON DELETE CASCADE,
    name            text NOT NULL,
    size            bigint NOT NULL CHECK (size >= 0),
    content_type    text NOT NULL,
    cache_control   text NOT NULL,
    etag            text NOT NULL,
    owner           uuid,
    metadata        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT objects_bucket_name_key UNIQUE (bucket_id, name)
);
CREATE INDEX IF NOT EXISTS objects_bucket_name_pattern_idx
    ON storage.objects (bucket_id, name text_pattern_ops);
DROP TRIGGER IF EXISTS objects_touch_updated_at ON storage.objects;
CREATE TRIGGER objects_touch_updated_at BEFORE UPDATE ON storage.objects
    FOR EACH ROW EXECUTE FUNCTION storage.touch_updated_at();

-- Signed upload URLs are single-use: the id of each token that uploaded is recorded
-- here in the transaction that writes the object, and the primary key refuses a second
-- use. Rows of tokens expired for a day are removed by later uploads.
CREATE TABLE IF NOT EXISTS storage.upload_tokens (
    id          uuid PRIMARY KEY,
    bucket_id   text NOT NULL,
    name        text NOT NULL,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS upload_tokens_expires_at_idx ON storage.upload_tokens (expires_at);
