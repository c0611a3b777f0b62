-- Tabula's built-in track, 3: Row Level Security on the storage service's tables, as
-- Supabase Storage does it. A user-scoped StorageService (StorageService::as_user,
-- ::through) reads and writes only what these policies allow; the unscoped service —
-- the role that owns the tables — is not subject to them.
--
-- - buckets: everyone may see them; only the owner role creates or changes them.
-- - objects: a user reads, writes, moves and deletes the objects they own; anyone
--   (anon included) reads the objects of a public bucket.
-- Idempotent, like every built-in migration.

GRANT USAGE ON SCHEMA storage TO anon, authenticated, service_role;
GRANT SELECT ON storage.buckets TO anon, authenticated, service_role;
GRANT SELECT ON storage.objects TO anon;
GRANT SELECT, INSERT, UPDATE, DELETE ON storage.objects TO authenticated, service_role;
-- The single-use record of upload tokens is the service's alone (tokens are redeemed
-- by the service the HTTP router runs, never through a user's handle).
REVOKE ALL ON storage.upload_tokens FROM anon, authenticated;
GRANT SELECT, INSERT, DELETE ON storage.upload_tokens TO service_role;

ALTER TABLE storage.buckets ENABLE ROW LEVEL SECURITY;
ALTER TABLE storage.objects ENABLE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS "Buckets are visible" ON storage.buckets;
CREATE POLICY "Buckets are visible" ON storage.buckets FOR SELECT USING (true);

DROP POLICY IF EXISTS "Objects of public buckets are readable" ON storage.objects;
CREATE POLICY "Objects of public buckets are readable" ON storage.objects FOR SELECT
    USING (EXISTS (SELECT 1 FROM storage.buckets b WHERE b.id = bucket_id AND b.public));
DROP POLICY IF EXISTS "Owners read their objects" ON storage.objects;
CREATE POLICY "Owners read their objects" ON storage.objects FOR SELECT TO authenticated
    USING (owner = auth.uid());
DROP POLICY IF EXISTS "Owners upload their objects" ON storage.objects;
CREATE POLICY "Owners upload their objects" ON storage.objects FOR INSERT TO authenticated
    WITH CHECK (owner = auth.uid());
DROP POLICY IF EXISTS "Owners change their objects" ON storage.objects;
CREATE POLICY "Owners change their objects" ON storage.objects FOR UPDATE TO authenticated
    USING (owner = auth.uid()) WITH CHECK (owner = auth.uid());
DROP POLICY IF EXISTS "Owners delete their objects" ON storage.objects;
CREATE POLICY "Owners delete their objects" ON storage.objects FOR DELETE TO authenticated
    USING (owner = auth.uid());

-- Whether `path` in `bucket` would make a key both a file and a folder, looking at
-- every object, whoever owns it (a user cannot see the others', but must not make
-- them unreachable either). Answers yes or no, never a name.
CREATE OR REPLACE FUNCTION storage.path_clashes(bucket text, path text) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = '' AS $$
    SELECT EXISTS (
        -- `path` is a folder of an existing object
        SELECT 1 FROM storage.objects o
        WHERE o.bucket_id = bucket
          AND o.name LIKE replace(replace(replace(path, '\', '\\'), '%', '\%'), '_', '\_') || '/%'
    ) OR EXISTS (
        -- an existing object is at a folder of `path`
        SELECT 1 FROM storage.objects o
        WHERE o.bucket_id = bucket
          AND o.name IN (
              SELECT array_to_string((string_to_array(path, '/'))[1:i], '/')
              FROM generate_series(1, coalesce(array_length(string_to_array(path, '/'), 1), 1) - 1) AS i)
    )
$$;
REVOKE ALL ON FUNCTION storage.path_clashes(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION storage.path_clashes(text, text) TO anon, authenticated, service_role;
