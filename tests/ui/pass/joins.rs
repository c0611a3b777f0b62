//! A model that refers to itself (a tree) derives, and joins itself with explicit
//! columns only through `Db::sql`; declared relations join both ways.

use tabula::Table;

#[derive(Table, Debug)]
pub struct Category {
    #[table(primary_key)]
    pub id: i64,
    #[table(belongs_to = Category)]
    pub parent_id: Option<i64>,
}

#[derive(Table, Debug)]
pub struct Item {
    #[table(primary_key)]
    pub id: i64,
    #[table(belongs_to = Category)]
    pub category_id: i64,
}

#[allow(dead_code)]
async fn queries(db: tabula::Db) -> tabula::Result<()> {
    let _: Vec<(Item, Category)> = db.query::<Item>().inner_join::<Category>().all().await?;
    let _: Vec<(Category, Option<Item>)> = db.query::<Category>().left_join::<Item>().all().await?;
    let _: Vec<(i64, Option<i64>)> = db
        .query::<Category>()
        .left_join::<Item>()
        .select((Category::ID, Item::ID))
        .all()
        .await?;
    Ok(())
}

fn main() {}
