-- The schema `colliding_models.rs` is pulled from (cli/tests/cli.rs, tests/schema_pull.rs).
CREATE SCHEMA other;
CREATE TYPE other.role AS ENUM ('a-b', 'a_b', 'self', 'Self');
CREATE TABLE other."user" (id int PRIMARY KEY);
CREATE TABLE other.users (id int PRIMARY KEY, role other.role, roles other.role[]);
CREATE TABLE other.roles (id int PRIMARY KEY);
CREATE TABLE other.new_users (id int PRIMARY KEY);
CREATE TABLE other.options (id int PRIMARY KEY, "userId" int, userid int, "_" int);
CREATE TABLE other.shapes (id int PRIMARY KEY, p point);
CREATE TABLE other.corners (id int PRIMARY KEY, shape_id int REFERENCES other.shapes, m int[][]);
CREATE TABLE other.tabula_notes (id int PRIMARY KEY);
