//! Every attribute word, named once.

pub(crate) const TABLE: &str = "table";

// struct level
pub(crate) const NAME: &str = "name";
pub(crate) const SCHEMA: &str = "schema";
pub(crate) const CACHE: &str = "cache";
pub(crate) const TTL: &str = "ttl";
pub(crate) const NEAR: &str = "near";
pub(crate) const DERIVE_NEW: &str = "derive_new";
pub(crate) const DERIVE_PATCH: &str = "derive_patch";
pub(crate) const STRUCT_KEYS: &[&str] = &[NAME, SCHEMA, CACHE, DERIVE_NEW, DERIVE_PATCH];

// field level
pub(crate) const PRIMARY_KEY: &str = "primary_key";
pub(crate) const GENERATED: &str = "generated";
pub(crate) const RENAME: &str = "rename";
pub(crate) const SKIP: &str = "skip";
pub(crate) const JSON: &str = "json";
pub(crate) const SOFT_DELETE: &str = "soft_delete";
pub(crate) const UNIQUE: &str = "unique";
pub(crate) const VERSION: &str = "version";
pub(crate) const BELONGS_TO: &str = "belongs_to";
pub(crate) const FIELD_KEYS: &[&str] = &[
    PRIMARY_KEY,
    GENERATED,
    RENAME,
    SKIP,
    JSON,
    SOFT_DELETE,
    UNIQUE,
    VERSION,
    BELONGS_TO,
];
