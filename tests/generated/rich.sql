-- The schema `rich_models.rs` is pulled from (cli/tests/cli.rs, tests/schema_pull.rs).
CREATE TYPE mood AS ENUM ('happy', 'very-sad');
CREATE TABLE categories (id int8 PRIMARY KEY, "type" text NOT NULL, "Label" text);
CREATE TABLE order_items (
    id serial PRIMARY KEY,
    category_id int8 REFERENCES categories,
    price numeric(10, 2) NOT NULL,
    tags text[] NOT NULL DEFAULT '{}',
    mood mood,
    seen date,
    payload bytea,
    code text UNIQUE
);
CREATE TABLE pairs (a int, b int, PRIMARY KEY (a, b));
CREATE TABLE points (id int PRIMARY KEY, at point);
