-- Storage metadata: buckets and objects. Bytes live in the object store; a row here is
-- written in the same transaction that makes the bytes visible (see tabula::storage).

CREATE SCHEMA IF NOT EXISTS storage;

CREATE TABLE storage.buckets (
    id                  text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9._-]{0,62}$'),
    public              boolean NOT NULL DEFAULT false,
    file_size_limit     bigint CHECK (file_size_limit IS NULL OR file_size_limit > 0),
    allowed_mime_types  jsonb,
    created_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE storage.objects (
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
CREATE INDEX objects_bucket_name_pattern_idx ON storage.objects (bucket_id, name text_pattern_ops);
CREATE TRIGGER objects_touch_updated_at BEFORE UPDATE ON storage.objects
    FOR EACH ROW EXECUTE FUNCTION tabula_touch_updated_at();
