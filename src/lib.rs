//! Test, example and benchmark host for the Tabula workspace; it has no code of its own.
