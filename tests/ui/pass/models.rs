use serde::{Deserialize, Serialize};
use tabula::{ColumnSet, Table};

#[derive(Serialize, Deserialize, Debug, Clone)]
struct Meta {
    tags: Vec<String>,
}

/// Every attribute at once.
#[derive(Table, Debug)]
#[table(name = "weird \"table\"", schema = "app")]
pub struct Everything {
    #[table(primary_key, generated)]
    pub id: uuid::Uuid,
    #[table(rename = "type")]
    pub r#type: String,
    #[table(json)]
    pub meta: Meta,
    #[table(json)]
    pub maybe: Option<Meta>,
    pub raw: serde_json::Value,
    #[table(skip)]
    pub cache: Vec<u8>,
    pub at: chrono::DateTime<chrono::Utc>,
    pub day: Option<chrono::NaiveDate>,
}

/// The default table name, and a model with only its key.
#[derive(Table)]
struct Category {
    #[table(primary_key)]
    id: i32,
}

fn main() {
    // A field named `meta` makes `Everything::META` its column; the trait's stays reachable.
    assert_eq!(<Everything as Table>::META.name, "weird \"table\"");
    assert_eq!(Everything::META.name(), "meta");
    assert_eq!(Everything::TYPE.name(), "type");
    assert_eq!(<Category as Table>::META.name, "categories");
    assert_eq!((Everything::TYPE, Everything::RAW).indices(), vec![1, 4]);
    let _new = NewEverything {
        r#type: "t".into(),
        meta: Meta { tags: vec![] },
        maybe: None,
        raw: serde_json::Value::Null,
        at: chrono::Utc::now(),
        day: None,
    };
    let _patch = EverythingPatch { day: Some(None), ..Default::default() };
    let _ = NewCategory { id: 1 };
    let _ = CategoryPatch {};
}
