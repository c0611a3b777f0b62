-- The seed's three models: profiles, experiences, documents.
-- created_at / updated_at are filled by defaults; updated_at follows every UPDATE.

CREATE OR REPLACE FUNCTION tabula_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

CREATE TABLE profiles (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid NOT NULL,
    username    text NOT NULL CONSTRAINT profiles_username_key UNIQUE,
    avatar_url  text,
    -- Not in the seed's interface, but its query filters on it (eq: { status: 'active' }).
    status      text NOT NULL DEFAULT 'active',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX profiles_user_id_idx ON profiles (user_id);
CREATE INDEX profiles_status_created_at_idx ON profiles (status, created_at DESC);
CREATE TRIGGER profiles_touch_updated_at BEFORE UPDATE ON profiles
    FOR EACH ROW EXECUTE FUNCTION tabula_touch_updated_at();

CREATE TABLE experiences (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid NOT NULL,
    content     text NOT NULL,
    metadata    jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX experiences_user_id_idx ON experiences (user_id);

CREATE TABLE documents (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid NOT NULL,
    name        text NOT NULL,
    content     text NOT NULL,
    metadata    jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX documents_user_id_idx ON documents (user_id);
CREATE TRIGGER documents_touch_updated_at BEFORE UPDATE ON documents
    FOR EACH ROW EXECUTE FUNCTION tabula_touch_updated_at();
