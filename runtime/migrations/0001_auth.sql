-- Tabula's built-in track, 1: what Supabase-style policies expect, on any PostgreSQL —
-- the roles `anon`, `authenticated`, `service_role`, and auth.uid() / auth.role() /
-- auth.jwt() reading the request's claims. Idempotent, so a database that created these
-- through its own migrations before they shipped in the crate takes it unchanged.
--
-- Claims live in the transaction-local setting `request.jwt.claims` (JSON), set by
-- Tabula's scoped handles with set_config(..., true). After any transaction that set it
-- locally, the setting reads as '' (not NULL) on that connection, so every function
-- treats '' as absent: an anonymous request gets NULL, never an error.

-- Roles belong to the whole cluster: two databases of one cluster may run this at the
-- same moment, so a role another run just created counts as created.
DO $$
DECLARE
    wanted text[][] := ARRAY[
        ['anon', 'NOLOGIN NOINHERIT'],
        ['authenticated', 'NOLOGIN NOINHERIT'],
        ['service_role', 'NOLOGIN NOINHERIT BYPASSRLS']
    ];
    i int;
BEGIN
    FOR i IN 1 .. array_length(wanted, 1) LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = wanted[i][1]) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I %s', wanted[i][1], wanted[i][2]);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
END
$$;

-- The application's login role (whoever runs the migrations) may switch to them.
DO $$
BEGIN
    EXECUTE format('GRANT anon, authenticated, service_role TO %I', current_user);
EXCEPTION WHEN unique_violation THEN
    NULL; -- granted by a concurrent run
END
$$;

CREATE SCHEMA IF NOT EXISTS auth;

CREATE OR REPLACE FUNCTION auth.jwt() RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT nullif(current_setting('request.jwt.claims', true), '')::jsonb
$$;

CREATE OR REPLACE FUNCTION auth.uid() RETURNS uuid
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN auth.jwt() ->> 'sub' ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
        THEN (auth.jwt() ->> 'sub')::uuid
    END
$$;

CREATE OR REPLACE FUNCTION auth.role() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT coalesce(auth.jwt() ->> 'role', nullif(current_setting('role', true), 'none'))
$$;

GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION auth.jwt(), auth.uid(), auth.role() TO anon, authenticated, service_role;
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
