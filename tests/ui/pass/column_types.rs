//! A user's own column type (one trait and one macro line), an enum, arrays and the
//! newer built-in types in one model.

use std::net::IpAddr;

use tabula::{CustomColumn, PgEnum, Table};

#[derive(Debug, Clone, PartialEq)]
pub struct Cents(i64);

impl CustomColumn for Cents {
    type Stored = i64;
    fn to_stored(&self) -> i64 {
        self.0
    }
    fn from_stored(stored: i64) -> Result<Self, tabula::BoxError> {
        Ok(Cents(stored))
    }
}
tabula::custom_column!(Cents);

#[derive(PgEnum, Debug, Clone, Copy, PartialEq)]
#[pg_enum(name = "Order Status", schema = "shop")]
pub enum Status {
    Open,
    #[pg_enum(rename = "closed-for-good")]
    Closed,
}

#[derive(Table, Debug, Clone)]
#[table(cache(ttl = 30))]
pub struct Order {
    #[table(primary_key, generated)]
    pub id: i64,
    pub total: Cents,
    pub refund: Option<Cents>,
    pub status: Status,
    pub history: Vec<Status>,
    pub tags: Vec<String>,
    pub client: Option<IpAddr>,
    pub at: chrono::NaiveDateTime,
    pub opens: chrono::NaiveTime,
    pub price: rust_decimal::Decimal,
}

fn main() {
    let _ = Order::TOTAL.eq(Cents(5));
    let _ = Order::STATUS.eq(Status::Closed);
    assert_eq!(<Status as tabula::ColumnType>::SQL_TYPE, r#""shop"."Order Status""#);
    assert_eq!(Status::Closed.label(), "closed-for-good");
}
