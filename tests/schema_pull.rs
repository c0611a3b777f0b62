//! The models `tabula schema pull` generated (`tests/generated/*.rs`, kept equal to the
//! command's output by `cli/tests/cli.rs`) compile as they are, and round-trip rows
//! through the database they were pulled from.

mod common;

#[allow(dead_code, unreachable_pub, clippy::all)]
mod seed {
    include!("generated/seed_models.rs");
}

#[allow(dead_code, unreachable_pub, clippy::all)]
mod rich {
    include!("generated/rich_models.rs");
}

#[allow(dead_code, unreachable_pub, clippy::all)]
mod colliding {
    include!("generated/colliding_models.rs");
}

/// The schema `colliding_models.rs` was pulled from (as `cli/tests/cli.rs` creates it).
const COLLIDING: &str = include_str!("generated/colliding.sql");

/// Names that collide once made Rust names get one each, in a schema of their own:
/// the output compiles, matches the tables, and round-trips.
#[tokio::test]
async fn the_pulled_colliding_names_compile_and_round_trip() {
    let db = common::db().await;
    db.execute_batch(COLLIDING).await.expect("schema");
    db.verify::<(
        colliding::NewUser,
        colliding::Options,
        colliding::Roles,
        colliding::TabulaNote,
        colliding::UserRow,
        colliding::Users,
    )>()
    .await
    .expect("the pulled models match the tables they came from");
    let user = db
        .create(colliding::NewUsers {
            id: 1,
            role: Some(colliding::Role::AB2),
            roles: Some(vec![
                colliding::Role::SelfValue,
                colliding::Role::SelfValue2,
            ]),
        })
        .await
        .expect("create");
    assert_eq!(
        db.read::<colliding::Users>(1).await.expect("read"),
        Some(user)
    );
    let options = db
        .create(colliding::NewOptions {
            id: 1,
            userid: Some(1),
            userid_2: Some(2),
            col__: Some(3),
        })
        .await
        .expect("create");
    assert_eq!(
        db.read::<colliding::Options>(1).await.expect("read"),
        Some(options)
    );
}

/// The schema `rich_models.rs` was pulled from (as `cli/tests/cli.rs` creates it).
const RICH: &str = include_str!("generated/rich.sql");

#[tokio::test]
async fn the_pulled_seed_models_round_trip_rows() {
    let db = common::db().await;
    db.verify::<(seed::Profile, seed::Experience, seed::Document)>()
        .await
        .expect("the pulled models match the tables they came from");
    let user = uuid::Uuid::new_v4();
    let created = db
        .create(seed::NewProfile {
            user_id: user,
            username: "pulled".into(),
            avatar_url: None,
        })
        .await
        .expect("create");
    assert_eq!(created.status, "active", "the database's default came back");
    let read = db
        .read::<seed::Profile>(created.id)
        .await
        .expect("read")
        .expect("row");
    assert_eq!(read, created);
    let by_name = seed::Profile::by_username(&db, "pulled")
        .await
        .expect("finder");
    assert_eq!(by_name, Some(created));
    let doc = db
        .create(seed::NewDocument {
            user_id: user,
            name: "n".into(),
            content: "c".into(),
        })
        .await
        .expect("document");
    assert_eq!(doc.metadata, serde_json::json!({}));
}

#[tokio::test]
async fn the_pulled_rich_models_round_trip_enums_arrays_numeric_and_relations() {
    let db = common::db().await;
    db.execute_batch(RICH).await.expect("schema");
    db.verify::<(rich::Category, rich::OrderItem)>()
        .await
        .expect("the pulled models match the tables they came from");
    let category = db
        .create(rich::NewCategory {
            id: 1,
            col_type: "kind".into(),
            label: Some("Label".into()),
        })
        .await
        .expect("category");
    let item = db
        .create(rich::NewOrderItem {
            category_id: Some(category.id),
            price: "12.50".parse().expect("decimal"),
            mood: Some(rich::Mood::VerySad),
            seen: chrono::NaiveDate::from_ymd_opt(2026, 11, 26),
            payload: Some(vec![0, 1, 255]),
            code: Some("A-1".into()),
        })
        .await
        .expect("item");
    assert_eq!(item.tags, Vec::<String>::new(), "the default array");
    let read = db
        .read::<rich::OrderItem>(item.id)
        .await
        .expect("read")
        .expect("row");
    assert_eq!(read, item);
    let with_category = db
        .query::<rich::OrderItem>()
        .inner_join::<rich::Category>()
        .all()
        .await
        .expect("join along the pulled belongs_to");
    assert_eq!(with_category, vec![(item, category)]);
}
